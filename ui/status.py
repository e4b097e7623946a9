"""The sidebar status panel shown on every page (active dataset, active run, training progress), and what happens
when this session's training job ends."""

from __future__ import annotations

import math

import streamlit as st

from doc_core.workflow.jobs import FAILED, STOPPED, SUCCEEDED, JobSnapshot, TrainingJob

from . import cached, state


def session_job() -> TrainingJob | None:
    """This session's training job, if it is still known to the server."""
    return cached.job_registry().get(state.job_id())


def handle_job_end(snap: JobSnapshot) -> bool:
    """Act once on the end of this session's job: make the new run active and leave a short notice for whatever
    page is open (the Training page also shows the outcome for good). True if it acted."""
    if not snap.done or st.session_state.get(state.JOB_HANDLED) == snap.job_id:
        return False
    st.session_state[state.JOB_HANDLED] = snap.job_id
    if snap.status == SUCCEEDED and snap.run is not None:
        state.set_run(snap.run.run_id)
    state.toast(outcome(snap)[1])
    return True


def outcome(snap: JobSnapshot) -> tuple[str, str]:
    """How a finished job ended, as (kind, markdown): kind is "success", "error" or "info"."""
    if snap.status == SUCCEEDED and snap.run is not None:
        auc = f" · test AUC **{snap.run.auc:.3f}**" if snap.run.auc is not None else ""
        early = f" (stopped early after {snap.n_records:,} of {snap.steps_total:,} steps)" if snap.stopped_early else ""
        return "success", (f"Training finished in {format_seconds(snap.elapsed_s)}{early}: run **{snap.run.name}** "
                           f"saved{auc}.")
    if snap.status == FAILED:
        return "error", f"Training failed: {snap.error}"
    if snap.status == STOPPED:
        return "info", "Training was stopped before the first step; nothing was saved."
    return "info", snap.message


REFERENCE_WORDS = {"folder": "the folder's reference/ classes", "fashion-mnist": "built-in Fashion-MNIST",
                   "none": "none"}


def reference_of(spec) -> tuple[str, str] | None:
    """The reference set a folder dataset trains with and why, in words (``doc_core.data.datasets.resolve_reference``,
    read from the loaded split); None for Fashion-MNIST or a folder that cannot be loaded."""
    if spec.kind != "folder":
        return None
    try:
        split, _ = cached.split(spec)
    except (ValueError, OSError):  # DataError is a ValueError; the pages say what is wrong
        return None
    resolved = split.info.get("reference")
    if not resolved:
        return None
    return REFERENCE_WORDS.get(resolved, resolved), str(split.info.get("reference_reason", ""))


def format_seconds(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def time_left_text(snap: JobSnapshot) -> str:
    """The job's one estimate of the time left (``snap.eta_s``, computed in ``doc_core.workflow.jobs``), in words;
    every view of a job shows this text and none computes its own."""
    if snap.eta_s is not None and math.isfinite(snap.eta_s):
        return f"about {format_seconds(snap.eta_s)} left"
    return "time left known after the first training steps" if snap.phase in ("starting", "selecting", "preparing") \
        else "time left not known yet"


def progress_text(snap: JobSnapshot) -> str:
    """One line for the progress bar of the current stage (``snap.fraction``): what runs now and how far it is,
    elapsed time and the job's time left."""
    return f"{snap.message} · {format_seconds(snap.elapsed_s)} elapsed · {time_left_text(snap)}"


def _job_panel() -> None:
    job = session_job()
    if job is None:
        return
    snap = job.snapshot(since=1 << 62)
    if snap.done:
        if handle_job_end(snap):
            st.rerun()
        return
    st.caption("Training in progress")
    st.progress(snap.fraction, text=progress_text(snap))


def render() -> None:
    """Draw the status panel into the sidebar (a fragment refreshes the job progress every 2 s while one runs)."""
    job = session_job()
    if job is not None and job.done:
        handle_job_end(job.snapshot(since=1 << 62))
    with st.sidebar:
        spec = state.dataset()
        st.caption("Active dataset")
        st.markdown(spec.describe())
        ref = reference_of(spec)
        if ref is not None:
            st.markdown(f"Reference set: {ref[0]}", help=ref[1])
        run = cached.active_run(state.chosen_run_id())
        st.caption("Active run")
        if run is None:
            st.markdown("No run yet")
        else:
            auc = f" · AUC **{run.auc:.3f}**" if run.auc is not None else ""
            st.markdown(f"{run.name}{auc}")
        running = job is not None and not job.done
        st.fragment(run_every=2.0 if running else None)(_job_panel)()


def show_flash() -> None:
    """Show (once) a message left by a callback, and a notice about a job that just ended."""
    msg = state.pop_flash()
    if msg:
        kind, text = msg
        {"success": st.success, "error": st.error, "warning": st.warning}.get(kind, st.info)(text)
    notice = state.pop_toast()
    if notice:
        st.toast(notice, icon=":material/model_training:", duration="long")

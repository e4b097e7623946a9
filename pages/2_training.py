"""Training page: settings, Start/Stop, live loss curves with progress, and the saved runs."""

from datetime import datetime

import pandas as pd
import streamlit as st

from doc_core.data import DataError
from doc_core.model.backbones import BACKBONES, BackboneConfig, resolve_weights
from doc_core.model.calibration import calibration_size
from doc_core.model.detector import ScorerConfig
from doc_core.model.training import TrainConfig
from doc_core.workflow import runs
from doc_core.workflow.jobs import FAILED, TrainingJob, steps_per_epoch
from doc_core.workflow.run_names import default_run_name
from doc_core.workflow.selection import (ANOMALY_KIND_WORDS, DEFECT_KINDS, MIN_FIT, MIN_HOLDOUT, auto_candidates,
                                         holdout_split)
from ui import access, cached, charts, feedback, live_chart, nav, page, state, status, theme

PERSIST = dict(persist_state="session")
START = "training_start"  # where the outcome of the Start and Stop buttons is shown
RUNS = "training_runs"    # where the outcome of Make active and Delete is shown
BACKBONE_LABELS = {"mobilenet_v2": "MobileNetV2 (ImageNet)", "vgg16": "VGG16 (ImageNet)",
                   "tiny": "Tiny CNN (random, for tests)"}
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
SIZES = (32, 48, 64, 96, 128, 160, 192, 224)
RATES = tuple(sorted({1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, TrainConfig().learning_rate}))
CURVES_NOTE = ("Thin lines: the loss of each step; thick lines: smoothed (exponential moving average); dotted lines: "
               "epoch boundaries.")
TRAINABLE = {"default": "Last blocks (default)", "all": "All layers",
             "none": "None: ImageNet features as they are (no training)"}
SCORER_LABELS = {"knn": "k-NN distance (whole image)", "patch": "patch (defect maps)", "lof": "Local Outlier Factor"}
IMAGE_SCORE_LABELS = {"top25": "top 25 % of patches", "max": "most anomalous patch", "top10": "top 10 % of patches",
                      "top50": "top 50 % of patches", "mean": "mean of all patches"}
ANOMALY_LABELS = {"any": "Not sure: compare every candidate", "defects": "Local defects (scratches, spots, cracks)",
                  "objects": "Different objects or whole-image changes"}
EVIDENCE_NOTE = ("Validation AUROC: held-out normal training images against copies of them with synthetic defects "
                 "pasted in (cut-and-paste patches, scars, spots); no test image or label is used. Real defects can "
                 "look different, and choosing without labels is known to be unreliable: this is evidence, not a "
                 "promise.")


def settings() -> tuple[BackboneConfig, TrainConfig]:
    """The backbone and training settings chosen with the widgets below."""
    ss = st.session_state
    frozen = ss[state.TR_TRAINABLE] == "none"
    backbone = BackboneConfig(name=ss[state.TR_BACKBONE], alpha=float(ss[state.TR_ALPHA]),
                              input_size=int(ss[state.TR_INPUT_SIZE]),
                              trainable_from=None if ss[state.TR_TRAINABLE] == "default" else ss[state.TR_TRAINABLE])
    train = TrainConfig(lam=float(ss[state.TR_LAMBDA]), learning_rate=float(ss[state.TR_LR]),
                        epochs=0 if frozen else int(ss[state.TR_EPOCHS]), batch_size=int(ss[state.TR_BATCH]),
                        seed=int(ss[state.TR_SEED]))
    return backbone, train


def scorer() -> ScorerConfig:
    """The scorer of a manual run (an auto run chooses its own)."""
    ss = st.session_state
    return ScorerConfig(ss[state.TR_SCORER], image_score=ss[state.TR_IMAGE_SCORE])


def anomalies() -> str:
    """What the user said the anomalies are like (auto's candidates); "any" for a manual run."""
    return st.session_state[state.TR_ANOMALIES] if preset() == "auto" else "any"


def preset() -> str:
    """The preset's code, "auto" or "manual" (doc_core.workflow.jobs.PRESETS)."""
    return state.PRESET_CODES[st.session_state[state.TR_PRESET]]


def follow_dataset_kind(kind: str) -> None:
    """Default the preset for the active dataset's kind (auto for folders), once per kind; the user's choice stays
    while the kind does."""
    ss = st.session_state
    if ss[state.TR_PRESET_FOR] != kind:
        ss[state.TR_PRESET_FOR] = kind
        ss[state.TR_PRESET] = state.default_preset(kind)


def settings_form(disabled: bool) -> None:
    ss = st.session_state
    c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    c1.radio("Preset", state.PRESETS, key=state.TR_PRESET, horizontal=True, **PERSIST, disabled=disabled,
             help="auto: first fits a few candidates (pretrained or DOC-trained features, whole-image or patch "
                  "scoring) on most of the normal training images and keeps the one that best finds synthetic "
                  "defects pasted into the others; then trains it on all of them. manual: exactly the settings "
                  "below. Default: auto for your own images, manual for Fashion-MNIST (where the defaults were "
                  "measured).")
    c2.selectbox("Scorer", list(SCORER_LABELS), format_func=SCORER_LABELS.get, key=state.TR_SCORER, **PERSIST,
                 disabled=disabled or ss[state.TR_PRESET] == state.PRESET_AUTO,
                 help="How a test image is scored: its pooled features' distance to the normal ones (k-NN, LOF), or "
                      "its patches' distances to the normal patches (patch: the mean of its 25 % most anomalous "
                      "patches), which also draws a defect map. The auto preset chooses it.")
    c3.selectbox("Image score (patch)", list(IMAGE_SCORE_LABELS), format_func=IMAGE_SCORE_LABELS.get,
                 key=state.TR_IMAGE_SCORE, **PERSIST,
                 disabled=disabled or ss[state.TR_PRESET] == state.PRESET_AUTO or ss[state.TR_SCORER] != "patch",
                 help="How a patch scorer turns an image's patch scores into its score: the mean of its 25 % most "
                      "anomalous patches (default; one odd patch of a normal image does not decide, and a defect or "
                      "object covering much of the image counts fully), its single most anomalous patch (PatchCore; "
                      "finds a defect of one patch, also flags one odd normal patch), the mean of its 10 % or 50 % "
                      "most anomalous patches, or the mean of all patches. The defect map is the same for all.")
    a1, _ = st.columns([2, 2])
    a1.selectbox("Your anomalies (auto)", list(ANOMALY_LABELS), format_func=ANOMALY_LABELS.get,
                 key=state.TR_ANOMALIES, **PERSIST, disabled=disabled or ss[state.TR_PRESET] != state.PRESET_AUTO,
                 help="What the anomalies you want to find are like, if you know (no labels needed). Auto compares "
                      "its candidates on small synthetic defects, so it favours patch scoring; that is right for "
                      "scratches and spots but wrong when an anomaly is a different object (a boot among sneakers), "
                      "where whole-image k-NN is better. Local defects: only patch scoring is compared; different "
                      "objects: only whole-image k-NN (pretrained or DOC-trained).")
    c1, c2, c3, c4 = st.columns(4)
    c1.selectbox("Backbone", BACKBONES, format_func=BACKBONE_LABELS.get, key=state.TR_BACKBONE, **PERSIST,
                 disabled=disabled, help="The pretrained network whose features DOC fine-tunes.")
    c2.selectbox("Width multiplier α", ALPHAS, key=state.TR_ALPHA, **PERSIST,
                 disabled=disabled or ss[state.TR_BACKBONE] != "mobilenet_v2",
                 help="MobileNetV2 only: channel width; 1.0 is the standard network.")
    c3.select_slider("Input size (pixels)", SIZES, key=state.TR_INPUT_SIZE, **PERSIST, disabled=disabled,
                     help="Images are resized to this square before the backbone.")
    c4.selectbox("Trainable layers", list(TRAINABLE), format_func=TRAINABLE.get, key=state.TR_TRAINABLE,
                 **PERSIST, disabled=disabled, help="Which layers DOC fine-tunes; the others stay as pretrained.")
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.number_input("λ (weight of l_C)", min_value=0.0, max_value=100.0, step=0.05, format="%.3g",
                    key=state.TR_LAMBDA, **PERSIST, disabled=disabled,
                    help="Total loss = l_D + λ·l_C. The paper uses 0.1; the default was chosen on a validation split.")
    c2.select_slider("Learning rate", RATES, format_func=lambda r: f"{r:.0e}", key=state.TR_LR, **PERSIST,
                     disabled=disabled)
    c3.number_input("Epochs", min_value=0, max_value=200, step=1, key=state.TR_EPOCHS, **PERSIST,
                    disabled=disabled or ss[state.TR_TRAINABLE] == "none",
                    help="Passes over the normal training images; 0 keeps the pretrained features.")
    c4.number_input("Batch size", min_value=2, max_value=1024, step=8, key=state.TR_BATCH, **PERSIST,
                    disabled=disabled, help="Normal images per step, and as many reference images.")
    c5.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=state.TR_SEED, **PERSIST,
                    disabled=disabled, help="Seeds the head's initialisation and the batch order.")
    c1, c2 = st.columns([4, 1])
    c1.text_input("Run name (optional)", key=state.TR_NAME, **PERSIST, disabled=disabled, max_chars=120,
                  placeholder=run_name(), help="Empty: the dataset and the start time, as shown. The field is "
                                               "cleared after each start, so every run gets a name of its own.")
    c2.number_input("Calibration hold-out (%)", min_value=0.0, max_value=50.0, step=5.0, format="%g",
                    key=state.TR_CALIBRATION, **PERSIST, disabled=disabled,
                    help="Share of the normal training images (at least 30) kept out of training and of the memory "
                         "bank; the default threshold is set on their scores, so its false-alarm rate is measured "
                         "on images the model never saw. 0 turns it off; with fewer than 90 normal images it turns "
                         "itself off.")


def calibration_fraction() -> float:
    """The calibration hold-out setting as a fraction (0 to 0.5)."""
    return float(st.session_state[state.TR_CALIBRATION]) / 100


def run_name() -> str:
    """The name typed in the field, else a new default: the active dataset and the time, unlike any saved run's."""
    typed = st.session_state[state.TR_NAME].strip()
    if typed:
        return typed
    taken = [r.name for r in cached.list_runs()] + [j.name for j in cached.job_registry().running()]
    return default_run_name(state.dataset(), datetime.now(), taken)


def weights_missing(backbone: BackboneConfig) -> bool:
    """True when the pretrained weights are not on this machine (the app never downloads them)."""
    return backbone.name != "tiny" and resolve_weights(backbone) == "imagenet"


def auto_too_few(split) -> bool:
    """True when the split has too few normal training images for the auto preset's hold-out."""
    return len(split.train_normal) < MIN_FIT + MIN_HOLDOUT


def plan_caption(split, backbone: BackboneConfig, train: TrainConfig) -> None:
    n_all = len(split.train_normal)
    n_cal, why_not = calibration_size(n_all, calibration_fraction())
    n = n_all - n_cal  # the calibration slice is taken first: neither selection nor training sees it
    per_epoch = steps_per_epoch(n, train.batch_size)
    if preset() == "auto" and auto_too_few(split):
        st.warning(f"The auto preset needs at least {MIN_FIT + MIN_HOLDOUT} normal training images; this dataset "
                   f"has {n}. Choose manual.")
    elif preset() == "auto":
        names = [c.name for c in auto_candidates(backbone, train, anomalies=anomalies())]
        n_fit, n_held = (len(part) for part in holdout_split(n))
        st.caption(f"Auto: first {len(names)} candidates ({'; '.join(names)}) are fitted on {n_fit:,} of the "
                   f"{n:,} normal training images and compared on synthetic defects pasted into copies of the other "
                   f"{n_held:,}; then the chosen one is trained on all {n:,} and {len(split.test_images):,} test "
                   "images are scored. DOC-trained candidates use the epochs below (at least 1).")
    elif train.epochs == 0:
        st.caption("No training: the run embeds the images with the pretrained backbone and scores the test set.")
    else:
        st.caption(f"{per_epoch * train.epochs:,} training steps ({per_epoch:,} per epoch of "
                   f"{n:,} normal images), then {len(split.test_images):,} test images are scored.")
    st.caption(f"Threshold: set on {n_cal:,} of the {n_all:,} normal training images, held out of training and of the "
               "memory bank." if n_cal else f"Threshold: on the training images' leave-one-out scores ({why_not}).")
    if weights_missing(backbone):
        alpha = f" with α {backbone.alpha:g}" if backbone.name == "mobilenet_v2" else ""
        st.warning(f"No ImageNet weights for {BACKBONE_LABELS[backbone.name]}{alpha} were found on this machine, and "
                   "the app does not download them. Choose another α or backbone, or put the weights file in the "
                   "folder named by DOC_WEIGHTS (or the Keras cache) and reload.")


def start_training() -> None:
    """Start button: build a job from the settings and the active dataset, and start it in the background."""
    if access.read_only():  # the button is not drawn then; a second check costs nothing
        return
    spec = state.dataset()
    backbone, train = settings()
    try:
        split, _ = cached.split(spec)
        job = TrainingJob(split, backbone, train, scorer(), preset=preset(), anomalies=anomalies(), name=run_name(),
                          dataset={**spec.to_dict(), "description": spec.describe()}, runs_dir=cached.runs_dir(),
                          calibration_fraction=calibration_fraction())
    except (DataError, ValueError) as exc:
        feedback.note(START, "error", f"Cannot start: {exc}")
        return
    cached.job_registry().add(job).start()
    state.set_job(job.job_id)
    st.session_state[state.TR_NAME] = ""  # the next run gets a new default name unless one is typed
    feedback.note(START, "info", f"Training started{f': {job.name}' if job.name else ''}. Its progress and loss "
                                 "curves appear below; you can use the other pages meanwhile.")


def stop_training() -> None:
    job = status.session_job()
    if job is not None:
        job.stop()
        feedback.note(START, "info", "Stopping after the current step: the model trained so far is still scored and "
                                     "saved.")


def live_view() -> None:
    """Progress, phase and live loss curves of this session's job; refreshed every second while it runs."""
    job = status.session_job()
    if job is None:
        return
    snap = job.snapshot()
    if snap.done:
        if status.handle_job_end(snap):
            st.rerun()  # redraw the whole page: buttons, runs table
        kind, text = status.outcome(snap)
        {"success": st.success, "error": st.error}.get(kind, st.info)(text)
        if kind == "success":
            st.page_link(nav.ROC, label="See its ROC curve and choose a threshold", icon=nav.ICONS[nav.ROC])
    else:
        text = status.progress_text(snap)
        if snap.stop_requested:
            text = ("Stopping after the current candidate… · " if snap.phase == "selecting" else
                    "Stopping after the current step… · ") + text
        st.progress(snap.fraction, text=text)
    if snap.selection:
        evidence(snap.selection)
    if snap.records:
        last = snap.records[-1]
        st.caption(f"Last step: l_D {last.l_d:.4f} · l_C {last.l_c:.4g} · total {last.total:.4f} · "
                   f"{last.images_per_s:,.0f} images/s")
        # updated in place (Plotly.react): st.plotly_chart would remount, and blank, the chart on every refresh
        live_chart.live_chart(charts.loss_curves(snap.records), key="live_curves", config=theme.PLOT_CONFIG)
        st.caption(CURVES_NOTE)
    elif not snap.done:
        st.caption("The loss curves appear with the first training step.")
    elif snap.status != FAILED:
        st.caption("No training steps were run, so there are no loss curves.")


def evidence(selection: dict) -> None:
    """The auto preset's evidence: one row per candidate, the chosen one marked."""
    kind = selection.get("anomalies", "any")
    st.markdown(f"**How the configuration was chosen** · {selection['n_fit']:,} normal training images fitted, "
                f"{selection['n_holdout']:,} held out and given synthetic defects"
                + ("" if kind == "any" else f" · anomalies: {ANOMALY_KIND_WORDS[kind]}"))
    rows = []
    for r in selection["rows"]:
        by_kind = r.get("val_auroc_by_kind") or {}
        rows.append({"Candidate": r["name"], "Validation AUROC": r["val_auroc"],
                     **{f"AUROC {k}": by_kind.get(k) for k in DEFECT_KINDS},
                     "Fit (s)": r["fit_s"], "ms / image": r["score_ms"], "Chosen": "✓" if r["chosen"] else "",
                     "Note": r.get("error", "")})
    table = pd.DataFrame(rows)
    if not table["Note"].astype(bool).any():
        table = table.drop(columns="Note")
    auc = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "Validation AUROC": auc, **{f"AUROC {k}": auc for k in DEFECT_KINDS},
        "Fit (s)": st.column_config.NumberColumn(format="%.1f"),
        "ms / image": st.column_config.NumberColumn(format="%.2f")})
    st.caption(EVIDENCE_NOTE)


def running_elsewhere(own: str | None) -> None:
    """Jobs started by other tabs (or by this tab before a reload): their progress, and a way to follow one."""
    for other in cached.job_registry().running():
        if other.job_id == own:
            continue
        snap = other.snapshot(since=1 << 62)
        with st.container(border=True):
            st.markdown(f"**A training job is running on this server**{f': {snap.name}' if snap.name else ''} "
                        f"(started {status.format_seconds(snap.elapsed_s)} ago, maybe in another tab or before a "
                        "reload).")
            st.progress(snap.fraction, text=status.progress_text(snap))
            st.button("Follow this job here", key=state.FOLLOW_JOB + other.job_id, on_click=state.set_job,
                      args=(other.job_id,), help="Show its live curves on this page; its run is saved either way.")


def runs_table(all_runs: list, active_id: str | None) -> None:
    rows = [{"": "●" if r.run_id == active_id else "", "Name": r.name,
             "Dataset": r.dataset.get("description") or r.dataset.get("name", ""), "Created": r.created_local,
             "Preset": "auto" if r.selection else "manual", "Scorer": r.scorer.name,
             "Backbone": r.backbone.get("name"), "Input (px)": r.backbone.get("input_size"),
             "Epochs": r.train.get("epochs"), "λ": r.train.get("lam"), "Learning rate": r.train.get("learning_rate"),
             "Batch": r.train.get("batch_size"), "Steps": r.steps, "Test AUC": r.auc,
             "Threshold": f"{r.threshold['value']:.4g}" if r.threshold else ""} for r in all_runs]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "": st.column_config.TextColumn(width=20, help="the active run"),
        "Name": st.column_config.TextColumn(width="medium"),
        "Dataset": st.column_config.TextColumn(width="large", help="the dataset the run was trained on"),
        "Learning rate": st.column_config.NumberColumn(format="%.0e"),
        "Test AUC": st.column_config.NumberColumn(format="%.3f"),
        "Threshold": st.column_config.TextColumn(help="saved on the ROC and threshold page")})


def make_active() -> None:
    run_id = st.session_state[state.TR_PICK_RUN]
    state.set_run(run_id)
    run = next((r for r in cached.list_runs() if r.run_id == run_id), None)
    feedback.note(RUNS, "success", f"Active run: **{run.name if run else run_id}**. The other pages show it now.")


def delete_picked() -> None:
    if access.read_only():
        return
    run_id = st.session_state[state.TR_PICK_RUN]
    try:
        runs.delete_run(run_id, cached.runs_dir())
        feedback.note(RUNS, "success", f"Deleted run {run_id}.")
    except runs.RunError as exc:
        feedback.note(RUNS, "error", str(exc))
    if state.chosen_run_id() == run_id:
        state.set_run(None)


def saved_runs() -> None:
    st.subheader("Saved runs", anchor=False)
    all_runs = cached.list_runs()
    if not all_runs:
        st.info(f"No saved runs yet. Finished runs are saved in `{cached.runs_dir()}` and appear here.")
        feedback.show(RUNS)  # e.g. the last run was just deleted
        return
    active = state.active_run()
    runs_table(all_runs, active.run_id if active else None)
    by_id = {r.run_id: r for r in all_runs}
    state.follow_active_run(state.TR_PICK_RUN, active.run_id if active else None)  # e.g. the run that just finished
    if st.session_state.get(state.TR_PICK_RUN) not in by_id:
        st.session_state[state.TR_PICK_RUN] = active.run_id if active else all_runs[0].run_id
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    c1.selectbox("Run", list(by_id), key=state.TR_PICK_RUN,
                 format_func=lambda i: f"{by_id[i].name} · {by_id[i].created_local}"
                                       + (f" · AUC {by_id[i].auc:.3f}" if by_id[i].auc is not None else ""))
    c2.button("Make active", on_click=make_active, width="stretch",
              disabled=active is not None and st.session_state[state.TR_PICK_RUN] == active.run_id,
              help="Use this run on the ROC and threshold page.")
    feedback.show(RUNS)  # under the buttons that were pressed, and as a toast
    if access.read_only():
        return
    with c3.popover("Delete…", width="stretch"):
        st.markdown(f"Delete **{by_id[st.session_state[state.TR_PICK_RUN]].name}** and its folder? This cannot be "
                    "undone.")
        st.button("Delete permanently", type="primary", on_click=delete_picked)


page.setup("Training")
st.markdown("DOC fine-tunes the backbone on two losses at once: **l_D**, the cross-entropy of classifying the "
            "reference images (keeps features descriptive), and **l_C**, the spread of the normal images' features "
            "(makes them compact). Training runs in the background; you can use the other pages meanwhile.")

spec = state.dataset()
try:
    split, _ = cached.split(spec)
except DataError as exc:
    st.error(f"The active dataset cannot be loaded: {exc}")
    st.page_link(nav.DATASET, label="Choose a dataset", icon=nav.ICONS[nav.DATASET])
    st.stop()
c = split.summary()
st.markdown(f"**Data:** {spec.describe()}")
reference = (f"{c['reference']:,} reference images ({len(split.reference_names)} classes)" if split.reference_names
             else "no labelled reference set (the features are kept close to the pretrained network's)")
st.caption(f"{c['normal training']:,} normal training images, {reference}, {len(split.test_images):,} test images.")
follow_dataset_kind(spec.kind)
st.page_link(nav.DATASET, label="Change the dataset", icon=nav.ICONS[nav.DATASET])

job = status.session_job()
running = job is not None and not job.done
if access.read_only():
    access.read_only_note("Training")
else:
    with st.container(border=True):
        settings_form(disabled=running)
        backbone, train = settings()
        plan_caption(split, backbone, train)
        b1, b2, _ = st.columns([1, 1, 4])
        b1.button("Start training", type="primary", on_click=start_training, width="stretch",
                  disabled=running or weights_missing(backbone) or (preset() == "auto" and auto_too_few(split)),
                  icon=":material/play_arrow:")
        b2.button("Stop", on_click=stop_training, disabled=not running, width="stretch", icon=":material/stop:",
                  help="End training after the current step; the model trained so far is still scored and saved.")
        feedback.show(START)

if job is not None and (running or state.is_active_dataset(job.dataset)):
    st.subheader("This session's training", anchor=False)
    if not state.is_active_dataset(job.dataset):  # still running on the dataset it was started on
        st.caption(f"On {job.dataset.get('description') or 'another dataset'}, not the active dataset.")
    st.fragment(run_every=1.0 if running else None)(live_view)()
else:  # no job, or a finished one on another dataset: the active run's curves
    active = state.active_run()
    if active is not None:
        st.subheader(f"Loss curves of the active run: {active.name}", anchor=False)
        if not state.is_active_dataset(active.dataset):
            st.caption(f"This run was trained on {active.dataset.get('description') or 'another dataset'}, not on "
                       "the active dataset.")
        try:
            history = cached.history_of(active)
        except runs.RunError as exc:
            history = None
            st.warning(f"The loss curves of this run cannot be read: {exc}")
        if history:
            st.plotly_chart(cached.history_figure_of(active), config=theme.PLOT_CONFIG, key="run_curves")
            st.caption(CURVES_NOTE)
        elif history is not None:
            st.caption("This run was not trained (pretrained features only), so it has no loss curves.")
        if active.selection:
            evidence(active.selection)

running_elsewhere(state.job_id())
saved_runs()

"""ROC and threshold page: how well a run separates normal from anomalous test images, and where to cut."""

import numpy as np
import pandas as pd
import streamlit as st

from doc_core.evaluation import metrics
from doc_core.model.detector import ScorerConfig
from doc_core.scoring import make_scorer
from doc_core.scoring.patch import IMAGE_SCORE_WORDS
from doc_core.workflow import runs
from ui import access, cached, charts, feedback, labelling, page, state, theme

PERSIST = dict(persist_state="session")
ss = st.session_state
SAVE = "roc_save_threshold"  # where the outcome of "Save threshold into run" is shown


def scorer_label(cfg: ScorerConfig) -> str:
    if cfg.name == "patch":
        return f"patch k-NN, k={cfg.k or 1}, image score {cfg.image_score}"
    k = make_scorer(cfg.name, cfg.k).k  # the scorer's own default when k is None
    return f"LOF, k={k}" if cfg.name == "lof" else f"k-NN distance, k={k}"


def score_title(cfg: ScorerConfig) -> str:
    return {"lof": "local outlier factor (higher = more anomalous)",
            "patch": f"patch distance, {IMAGE_SCORE_WORDS[cfg.image_score]} (higher = more anomalous)"}.get(
        cfg.name, "k-NN distance (higher = more anomalous)")


def score_meaning(cfg: ScorerConfig) -> str:
    if cfg.name == "lof":
        return "the local outlier factor of an image's features among the normal training features (about 1 = normal)"
    if cfg.name == "patch":
        return ("the distance of an image's patches to their nearest normal training patches: "
                f"{IMAGE_SCORE_WORDS[cfg.image_score]}")
    return "the mean distance from an image's features to its nearest normal training features"


def same_scorer(a: ScorerConfig, b: ScorerConfig) -> bool:
    """Equal once a missing k is read as the scorer's default (patch scorers: equal configs)."""
    if "patch" in (a.name, b.name):
        return a == b
    return (a.name, make_scorer(a.name, a.k).k, a.max_bank_size) == (b.name, make_scorer(b.name, b.k).k, b.max_bank_size)


def chosen_scorer(run: runs.RunSummary) -> ScorerConfig:
    choice = ss[state.ROC_SCORER]
    if choice == state.SCORER_RUN:
        return run.scorer
    # a patch run's bank cap counts patches, not the pooled features the other scorers use
    cap = None if run.scorer.name == "patch" else run.scorer.max_bank_size
    cfg = ScorerConfig(name="lof" if choice == state.SCORER_LOF else "knn", k=int(ss[state.ROC_K]), max_bank_size=cap)
    return run.scorer if same_scorer(cfg, run.scorer) else cfg


def on_scorer_picked() -> None:
    """Start each scorer at its own default number of neighbours."""
    choice = ss[state.ROC_SCORER]
    if choice != state.SCORER_RUN:
        ss[state.ROC_K] = make_scorer("lof" if choice == state.SCORER_LOF else "knn").k


def follow_saved_scorer(run: runs.RunSummary) -> None:
    """When another run is opened, show it with the scorer its saved threshold belongs to."""
    saved = ScorerConfig.from_dict(run.threshold["scorer"]) if run.threshold else run.scorer
    if same_scorer(saved, run.scorer):
        ss[state.ROC_SCORER] = state.SCORER_RUN
    else:
        ss[state.ROC_SCORER] = state.SCORER_LOF if saved.name == "lof" else state.SCORER_KNN
        ss[state.ROC_K] = int(make_scorer(saved.name, saved.k).k)


def reset_threshold(run: runs.RunSummary, scorer: ScorerConfig) -> None:
    """Start from the run's saved operating point for this scorer, else from the detector's default percentile."""
    saved = run.threshold if run.threshold and same_scorer(ScorerConfig.from_dict(run.threshold["scorer"]), scorer) \
        else None
    code_to_policy = {v: k for k, v in state.POLICY_CODES.items()}
    if saved:
        ss[state.ROC_POLICY] = code_to_policy.get(saved["policy"], state.POLICY_MANUAL)
        if saved["policy"] == "target_fpr" and saved.get("param") is not None:
            ss[state.ROC_TARGET_FPR] = float(saved["param"]) * 100
        if saved["policy"] == "train_percentile" and saved.get("param") is not None:
            ss[state.ROC_PERCENTILE] = float(saved["param"])
        ss[state.ROC_THRESHOLD] = float(saved["value"])
    else:
        ss[state.ROC_POLICY] = state.POLICY_PERCENTILE
        ss[state.ROC_PERCENTILE] = float(run.config.get("threshold_percentile", 95.0))


def to_manual() -> None:
    ss[state.ROC_POLICY] = state.POLICY_MANUAL


def slider_range(scores: np.ndarray, train_scores: np.ndarray) -> tuple[float, float, float]:
    both = np.concatenate([scores, train_scores])
    lo, hi = float(both.min()), float(both.max())
    pad = (hi - lo) * 0.02 or 1.0
    return lo - pad, hi + pad, float(f"{(hi - lo + 2 * pad) / 1000:.2g}")


def policy_threshold(policy: str, labels: np.ndarray, scores: np.ndarray, train_scores: np.ndarray,
                     calibration: np.ndarray | None) -> float | None:
    return metrics.policy_threshold(state.POLICY_CODES[policy], scores, labels, train_scores, policy_param(policy),
                                    calibration)


def policy_basis(policy: str, n_cal: int, by_analysts) -> str:
    """What a policy's threshold rests on, in words: label-free ones name the calibration images, label-based ones
    say that metrics on the same labels are optimistic."""
    whose = "the analysts'" if by_analysts is not None else "the test set's"
    if policy == state.POLICY_PERCENTILE:
        return (f"Uses no labels: this percentile of the scores of the {n_cal:,} held-out calibration images (normal "
                "training images kept out of training and of the memory bank)." if n_cal else
                "Uses no labels, but this run has no held-out calibration images: the threshold rests on the "
                "leave-one-out scores of the normal training images, the same images that form the memory bank.")
    if policy == state.POLICY_FPR:
        return (f"Uses no labels: at most this share of the {n_cal:,} held-out calibration images is flagged."
                if n_cal else f"Set on {whose} labelled normal images, so the metrics below are optimistic.")
    if policy == state.POLICY_F1:
        return f"Chosen with {whose} labels, so the metrics below are optimistic."
    return "Drag the slider to any threshold."



def policy_param(policy: str) -> float | None:
    if policy == state.POLICY_FPR:
        return ss[state.ROC_TARGET_FPR] / 100
    if policy == state.POLICY_PERCENTILE:
        return float(ss[state.ROC_PERCENTILE])
    return None


@st.fragment
def threshold_section(run: runs.RunSummary, scorer: ScorerConfig, stored: runs.RunScores, scores: np.ndarray,
                      train_scores: np.ndarray) -> None:
    """Policy, slider, metrics and charts; reruns on its own as the slider moves."""
    labels, by_analysts = labelling.roc_labels(run, stored)  # the test set's labels, or enough analysts' labels
    labelled = stored.has_labels or by_analysts is not None
    calibration = cached.calibration_scores_for(run, scorer)  # None: no held-out calibration images
    n_cal = 0 if calibration is None else len(calibration)
    label_free = (state.POLICY_PERCENTILE, state.POLICY_FPR) if n_cal else (state.POLICY_PERCENTILE,)
    policies = state.POLICIES if labelled else label_free + (state.POLICY_MANUAL,)
    if ss[state.ROC_POLICY] not in policies:
        ss[state.ROC_POLICY] = state.POLICY_PERCENTILE
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    policy = c1.radio("Set the threshold by", policies, key=state.ROC_POLICY, horizontal=True, **PERSIST)
    if policy == state.POLICY_FPR:
        c2.number_input("Target false-positive rate (%)", min_value=0.0, max_value=100.0, step=0.5, format="%.1f",
                        key=state.ROC_TARGET_FPR, **PERSIST, help=policy_basis(policy, n_cal, by_analysts))
    elif policy == state.POLICY_PERCENTILE:
        c2.number_input("Percentile of calibration scores" if n_cal else "Percentile of training scores",
                        min_value=0.0, max_value=100.0, step=0.5, format="%.1f", key=state.ROC_PERCENTILE,
                        **PERSIST, help=policy_basis(policy, n_cal, by_analysts))
    if policy in (state.POLICY_PERCENTILE, state.POLICY_FPR, state.POLICY_F1):
        st.caption(policy_basis(policy, n_cal, by_analysts))
    else:
        c2.caption(policy_basis(policy, n_cal, by_analysts))

    lo, hi, step = slider_range(scores, train_scores if calibration is None else
                                np.concatenate([train_scores, calibration]))
    wanted = policy_threshold(policy, labels, scores, train_scores, calibration)
    if wanted is not None or not lo <= ss.get(state.ROC_THRESHOLD, np.nan) <= hi:
        ss[state.ROC_THRESHOLD] = float(np.clip(wanted if wanted is not None else run.default_threshold, lo, hi))
    threshold = st.slider("Threshold: images scoring above it are flagged as anomalies", min_value=lo, max_value=hi,
                          step=step, key=state.ROC_THRESHOLD, on_change=to_manual, format="%.4g")

    flagged = int(np.sum(scores > threshold))
    if labelled:
        mask = labels >= 0
        report = metrics.report_at_threshold(labels[mask], scores[mask], threshold)
        m = st.columns(6)
        m[0].metric("Precision", f"{report.precision:.1%}", help="Share of flagged images that are anomalies.")
        m[1].metric("Recall", f"{report.recall:.1%}", help="Share of anomalies flagged (true-positive rate).")
        m[2].metric("F1", f"{report.f1:.3f}", help="Harmonic mean of precision and recall.")
        m[3].metric("Accuracy", f"{report.accuracy:.1%}")
        m[4].metric("False-positive rate", f"{report.fpr:.1%}", help="Share of normal images flagged.")
        m[5].metric(f"Flagged of {len(scores):,}", f"{flagged:,}", help="Test images scoring above the threshold.")
        curve = cached.curves(labels, scores)
        left, right = st.columns(2, gap="medium")
        left.markdown(f"**ROC curve** · AUC {curve['auc']:.3f} · the circle is the threshold")
        left.plotly_chart(charts.roc(curve, report.fpr, report.recall), config=theme.PLOT_CONFIG, key="roc")
        right.markdown(f"**Precision-recall curve** · average precision {curve['ap']:.3f}")
        right.plotly_chart(charts.pr(curve, report.recall, report.precision if report.tp + report.fp else None),
                           config=theme.PLOT_CONFIG, key="pr")
        left, right = st.columns([3, 2], gap="medium")
        left.markdown(f"**Test scores** · {scorer_label(scorer)}; {score_meaning(scorer)}")
        groups = [("test normal", scores[labels == 0], theme.NORMAL), ("test anomaly", scores[labels == 1], theme.ANOMALY)]
        if np.any(labels < 0):
            groups.append(("test unlabelled", scores[labels < 0], theme.UNLABELLED))
        left.plotly_chart(charts.score_histogram(groups, threshold, score_title(scorer)), config=theme.PLOT_CONFIG,
                          key="histogram")
        with right:
            st.markdown("**Confusion matrix** at this threshold")
            st.plotly_chart(charts.confusion(report), config=theme.PLOT_CONFIG, key="confusion")
    else:
        st.metric(f"Flagged of {len(scores):,} test images", f"{flagged:,}")
        st.info("This run's test set has no labelled normal and anomalous images, so there is no ROC or PR curve. "
                "The histogram compares the test scores with the normal training scores.")
        groups = [("normal training (leave-one-out)", train_scores, theme.NORMAL),
                  ("test unlabelled", scores, theme.UNLABELLED)]
        st.plotly_chart(charts.score_histogram(groups, threshold, score_title(scorer)), config=theme.PLOT_CONFIG,
                        key="histogram")

    c1, c2 = st.columns([1, 1], gap="small", width=520)
    if access.read_only():
        c1.caption(":material/lock: Saving the threshold into the run is turned off (read-only mode).")
    elif c1.button("Save threshold into run", type="primary", icon=":material/save:", width="stretch",
                 help="Store this threshold, its policy and the scorer in the run's folder (run.json)."):
        try:
            runs.save_threshold(run.run_id, threshold, state.POLICY_CODES[policy], policy_param(policy), scorer,
                                cached.runs_dir())
            feedback.note(SAVE, "success", f"Saved threshold {threshold:.4g} into run **{run.name}** (set by: "
                                           f"{policy}; scorer: {scorer_label(scorer)}).")
        except (runs.RunError, ValueError, OSError) as exc:
            feedback.note(SAVE, "error", f"Could not save the threshold: {exc}")
        st.rerun()  # the whole page: the saved operating point above and the sidebar show the new threshold
    comment = (f"run {run.run_id} ({run.name}); scorer {scorer_label(scorer)}; threshold {threshold:.7g}\n"
               "predicted = anomaly where score > threshold; higher scores are more anomalous")
    c2.download_button("Download scores (CSV)", data=lambda: runs.scores_csv(stored, scores, threshold, comment),
                       file_name=f"{run.run_id}-scores.csv", mime="text/csv", on_click="ignore",
                       icon=":material/download:", width="stretch")
    feedback.show(SAVE)  # under the button that was pressed, and as a toast


def request_compare() -> None:
    ss[state.ROC_COMPARE] = True


@st.fragment
def compare_section(run: runs.RunSummary, labels: np.ndarray) -> None:
    st.subheader("Compare scorers", anchor=False)
    st.caption("Scores the stored test features again with other scorers on the same memory bank of normal "
               "features: no retraining and no re-embedding.")
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    k_knn = c1.number_input("k for k-NN", min_value=1, max_value=500, step=1, key=state.ROC_COMPARE_K_KNN, **PERSIST)
    k_lof = c2.number_input("k for LOF", min_value=2, max_value=500, step=1, key=state.ROC_COMPARE_K_LOF, **PERSIST)
    c3.button("Compare", on_click=request_compare, icon=":material/compare_arrows:")
    if not ss[state.ROC_COMPARE]:
        return
    rows, curves_ = [], []
    for label, cfg in ((f"as trained ({scorer_label(run.scorer)})", run.scorer),
                       (scorer_label(ScorerConfig("knn", int(k_knn))), ScorerConfig("knn", int(k_knn))),
                       (scorer_label(ScorerConfig("lof", int(k_lof))), ScorerConfig("lof", int(k_lof)))):
        try:
            s, _ = cached.scores_for_scorer(run, cfg)
            c = cached.curves(labels, s)
            rows.append({"Scorer": label, "Test AUC": c["auc"], "Average precision": c["ap"], "Note": ""})
            curves_.append((label, c))
        except (runs.RunError, ValueError) as exc:
            rows.append({"Scorer": label, "Test AUC": None, "Average precision": None, "Note": str(exc)})
    table = pd.DataFrame(rows)
    if not table["Note"].astype(bool).any():
        table = table.drop(columns="Note")
    left, right = st.columns([1, 1], gap="medium")
    left.dataframe(table, hide_index=True, width="stretch", column_config={
        "Scorer": st.column_config.TextColumn(width="medium"),
        "Test AUC": st.column_config.NumberColumn(format="%.3f"),
        "Average precision": st.column_config.NumberColumn(format="%.3f")})
    if curves_:
        main, others = curves_[0], curves_[1:]
        right.plotly_chart(charts.roc(main[1], others=others, name=main[0]), config=theme.PLOT_CONFIG,
                           key="compare_roc")


page.setup("ROC and threshold")
run = page.run_or_stop("its test scores, ROC curve and threshold tools")  # the active run, as on every page
stored = cached.scores_of(run)
if len(stored.scores) == 0:
    st.warning("This run has no test images, so there is nothing to evaluate. Add a test/ folder to the dataset.")
    st.stop()

if ss[state.ROC_CONTEXT] is None or ss[state.ROC_CONTEXT][0] != run.run_id:
    follow_saved_scorer(run)
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
c1.segmented_control("Scorer", state.SCORERS, key=state.ROC_SCORER, required=True, **PERSIST,
                     on_change=on_scorer_picked,
                     format_func=lambda s: f"{s} ({scorer_label(run.scorer)})" if s == state.SCORER_RUN else s,
                     help="How a test image's features are turned into an anomaly score, against the memory bank "
                          "of normal training features.")
c2.number_input("k (neighbours)", min_value=1, max_value=500, step=1, key=state.ROC_K, **PERSIST,
                disabled=ss[state.ROC_SCORER] == state.SCORER_RUN)
scorer = chosen_scorer(run)
try:
    scores, train_scores = cached.scores_for_scorer(run, scorer)
except (runs.RunError, ValueError) as exc:
    st.error(f"Cannot score with {scorer_label(scorer)}: {exc}")
    st.stop()

if ss[state.ROC_CONTEXT] != (run.run_id, scorer):
    ss[state.ROC_CONTEXT] = (run.run_id, scorer)
    reset_threshold(run, scorer)
if run.threshold:
    t = run.threshold
    st.caption(f"Saved operating point: threshold {t['value']:.4g} with {scorer_label(ScorerConfig.from_dict(t['scorer']))}"
               f" ({t['policy'].replace('_', ' ')}).")

threshold_section(run, scorer, stored, scores, train_scores)
if stored.has_labels:
    compare_section(run, stored.labels)

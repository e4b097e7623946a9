"""Compare methods page: the run's DOC detector against simple baselines on the split it was trained on."""

import pandas as pd
import streamlit as st

from doc_core.workflow import runs
from ui import cached, charts, page, state, theme

ss = st.session_state
DOC_KNN = "DOC k-NN"


def request_comparison(run_id: str) -> None:
    ss[state.CMP_RUN] = run_id


page.setup("Compare methods")
run = page.run_or_stop("AUC, fit time and scoring speed of DOC and of the baselines on its dataset")
stored = cached.scores_of(run)
if not stored.has_labels:
    st.info("This run's test set has no labelled normal and anomalous images, so the methods cannot be compared "
            "by AUC. Train on a dataset with a labelled test/ folder.")
    st.stop()
split = page.split_or_stop(run)

st.caption("Each method scores the run's test images, higher = more anomalous: k-NN distance on raw pixels; k-NN "
           "on the backbone's pretrained features (no DOC training); the run's DOC features with k-NN (its stored "
           "scores) and with LOF (its stored features rescored, no re-embedding); and a convolutional autoencoder "
           "trained on the same normal images (reconstruction error). Fit times include training; scoring speed is "
           "end to end per image on this machine's CPU.")
st.button("Run comparison", type="primary", icon=":material/compare_arrows:", on_click=request_comparison,
          args=(run.run_id,), help="Fits the baselines on the run's normal training images and scores its test set.")
if ss[state.CMP_RUN] != run.run_id:
    st.stop()

try:
    with st.spinner("Fitting the baselines and scoring the test set: this can take a minute with MobileNetV2…"):
        results = cached.method_comparison(run)
except (runs.RunError, ValueError, OSError) as exc:  # DataError is a ValueError
    st.error(f"The comparison could not be run: {exc}")
    st.stop()

rows, curves_ = [], {}
for m in results:
    rows.append({"Method": m.name, "Test AUC": m.auc, "Fit (s)": m.fit_s, "Scoring (ms per image)":
                 m.score_ms_per_image, "Note": m.note})
    if m.scores is not None and m.auc is not None:
        curves_[m.name] = cached.curves(stored.labels, m.scores)
table = pd.DataFrame(rows)
left, right = st.columns([1, 1], gap="medium")
with left:
    st.markdown(f"**{len(stored.scores):,} test images** · {run.dataset.get('description') or ''}")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "Method": st.column_config.TextColumn(width="medium"),
        "Test AUC": st.column_config.NumberColumn(format="%.3f"),
        "Fit (s)": st.column_config.NumberColumn(format="%.2f"),
        "Scoring (ms per image)": st.column_config.NumberColumn(format="%.3f"),
        "Note": st.column_config.TextColumn(width="large")})
if DOC_KNN in curves_:
    others = [(name, c) for name, c in curves_.items() if name != DOC_KNN]
    right.markdown("**ROC curves** · the run's DOC k-NN highlighted")
    right.plotly_chart(charts.roc(curves_[DOC_KNN], others=others, name=f"{DOC_KNN} (this run)"),
                       config=theme.PLOT_CONFIG, key="compare_methods_roc")

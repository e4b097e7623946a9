"""DOC Explorer: the Streamlit dashboard. Start it with `streamlit run app.py` (see the README).

This file is the Home page; the other pages are in pages/.
"""

import streamlit as st

from doc_core.data import DataError
from ui import cached, nav, page, state


def home() -> None:
    st.markdown(
        "DOC Explorer trains a **Deep One-Class Classification** detector: a pretrained CNN is fine-tuned so that "
        "images of one *normal* class cluster tightly, while its features stay descriptive of other *reference* "
        "classes. Test images that lie far from every normal training image are flagged as **anomalies**, and you "
        "choose the decision threshold from ROC and precision-recall curves.")

    spec = state.dataset()
    run = cached.active_run(state.chosen_run_id())
    left, right = st.columns(2, gap="large")
    with left, st.container(border=True):
        st.subheader("Active dataset", anchor=False)
        st.markdown(spec.describe())
        try:
            split, _ = cached.split(spec)
            c = split.summary()
            ref = (f"{c['reference']:,} reference ({len(split.reference_names)} classes)" if c["reference"]
                   else "no labelled reference set")
            st.markdown(f"{c['normal training']:,} normal training · {ref} · {c['test normal']:,} test normal · "
                        f"{c['test anomaly']:,} test anomaly" +
                        (f" · {c['test unlabelled']:,} unlabelled" if c["test unlabelled"] else ""))
        except DataError as exc:
            st.error(str(exc))
        st.page_link(nav.DATASET, label="Change the dataset", icon=nav.ICONS[nav.DATASET])
    with right, st.container(border=True):
        st.subheader("Active run", anchor=False)
        if run is None:
            st.markdown("No run yet. Train one on the Training page; it is saved in the runs folder "
                        f"`{cached.runs_dir()}`.")
        else:
            st.markdown(f"**{run.name}** · {run.created_local}")
            st.markdown(run.config_line())
            facts = [f"test AUC **{run.auc:.3f}**" if run.auc is not None else "no labelled test set",
                     f"{run.steps:,} training steps" + (" (stopped early)" if run.stopped_early else "")]
            if run.threshold:
                facts.append(f"saved threshold {run.threshold['value']:.4g}")
            st.markdown(" · ".join(facts))
            st.caption(run.dataset.get("description", ""))
        st.page_link(nav.TRAINING, label="Train, reload or delete runs", icon=nav.ICONS[nav.TRAINING])

    st.subheader("Where to go next", anchor=False)
    steps = [(nav.DATASET, "1 · Dataset", "Pick normal, anomaly and reference classes, or use your own images; "
              "check the counts and sample images."),
             (nav.TRAINING, "2 · Training", "Set the backbone and training settings, start training and watch the "
              "losses live. Each finished run is saved to disk."),
             (nav.ROC, "3 · ROC and threshold", "See how well a run separates normal from anomalous images, choose "
              "a threshold, compare scorers and download the scores."),
             (nav.EXPLORER, "4 · Embedding explorer", "See the test images in 2-D maps of raw pixels, the backbone "
              "before DOC training and after it; select points to see the images and why they score as they do."),
             (nav.RANKED, "5 · Ranked anomalies", "Browse the test images by score: the surest anomalies, the "
              "anomalies that look normal and the false alarms, with Grad-CAM or patch defect maps."),
             (nav.SCORE, "6 · Score new images", "Upload images: score, verdict at the run's threshold, heatmap and "
              "the nearest normal training images."),
             (nav.COMPARE, "7 · Compare methods", "Raw-pixel and pretrained k-NN, DOC with k-NN and LOF and a conv "
              "autoencoder, side by side on the active run's data.")]
    cols = st.columns(3) + st.columns(3) + st.columns(3)
    suggested = nav.TRAINING if run is None else nav.ROC
    for col, (target, label, text) in zip(cols, steps):
        with col, st.container(border=True):
            st.page_link(target, label=label, icon=nav.ICONS[target])
            st.caption(text)
            if target == suggested:
                st.markdown(":blue-badge[Suggested next step]")


page.setup("Home")
home()

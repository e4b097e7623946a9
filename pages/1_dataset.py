"""Dataset page: choose the built-in Fashion-MNIST split or your own images, and look at what you chose."""

from pathlib import Path

import pandas as pd
import streamlit as st

from doc_core.data import FASHION_MNIST_CLASSES, FOLDER_LAYOUT, DataError, SplitConfig
from doc_core.data.datasets import FASHION_REFERENCE_SIZE, REFERENCE_CHOICES, DatasetSpec, describe_zip_limits
from doc_core.data.datasets import resolve_server_folder
from ui import access, cached, charts, feedback, nav, page, state, status, theme

PERSIST = dict(persist_state="session")
CLASS_INDEX = {name: i for i, name in enumerate(FASHION_MNIST_CLASSES)}
IMAGE_SIZE_HELP = ("Every image is resized to a square of this size when loaded. 96 px is the default: on the "
                   "magnetic-tile defects 160 and 224 px scored lower with every method and cost 2-6x the time per "
                   "image and more memory (README, 'Image size').")
REFERENCE_LABELS = {"auto": "Auto", "folder": "The folder's reference/", "fashion-mnist": "Built-in Fashion-MNIST",
                    "none": "None"}


def problem(exc: Exception) -> str:
    """The message of a data error, without the layout (the page shows it already)."""
    return str(exc).split("\nExpected layout:")[0].strip()


def reset_reference_experiment() -> None:
    state.reset(state.DS_NORMAL, state.DS_ANOMALY, state.DS_REFERENCE, state.DS_N_NORMAL, state.DS_N_REFERENCE,
                state.DS_SEED)


def fashion_spec() -> DatasetSpec:
    """The Fashion-MNIST split described by the widgets below."""
    ss = st.session_state
    ids = lambda names: tuple(sorted(CLASS_INDEX[n] for n in names))  # noqa: E731
    return DatasetSpec.fashion_mnist(SplitConfig(
        normal_classes=ids(ss[state.DS_NORMAL]), anomaly_classes=ids(ss[state.DS_ANOMALY]) or None,
        reference_classes=ids(ss[state.DS_REFERENCE]) or None, n_normal=ss[state.DS_N_NORMAL] or None,
        n_reference=int(ss[state.DS_N_REFERENCE]), seed=int(ss[state.DS_SEED])))


def fashion_settings() -> DatasetSpec:
    st.caption("The defaults are the reference experiment of the Keras write-up: Sneaker is normal, Ankle boot is the "
               "anomaly, and 6,000 images of the other eight classes form the reference set.")
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.multiselect("Normal classes", FASHION_MNIST_CLASSES, key=state.DS_NORMAL, **PERSIST,
                   help="Training uses images of these classes only; they define what is normal.")
    c2.multiselect("Anomaly classes", FASHION_MNIST_CLASSES, key=state.DS_ANOMALY, **PERSIST,
                   placeholder="Every class that is not normal",
                   help="Test images of these classes are the anomalies to find. Empty: every class that is not "
                        "normal.")
    c3.multiselect("Reference classes", FASHION_MNIST_CLASSES, key=state.DS_REFERENCE, **PERSIST,
                   placeholder="Every class that is neither normal nor an anomaly",
                   help="Labelled images of these classes keep the features descriptive (the l_D loss). They must "
                        "not include a normal class.")
    c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
    c1.number_input("Normal training images (0 = all)", min_value=0, max_value=60000, step=100, key=state.DS_N_NORMAL,
                    **PERSIST, help="A random subset of the normal training images; 0 uses all of them (6,000 per "
                                    "class).")
    c2.number_input("Reference images", min_value=2, max_value=60000, step=100, key=state.DS_N_REFERENCE, **PERSIST,
                    help="Drawn at random from the reference classes.")
    c3.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=state.DS_SEED, **PERSIST,
                    help="Seeds every random draw of the split.")
    c4.button("Reset to defaults", on_click=reset_reference_experiment, width="stretch", icon=":material/restart_alt:",
              disabled=fashion_spec() == DatasetSpec.fashion_mnist(), help="Sneaker normal, Ankle boot anomalous, "
              "6,000 reference images of the other eight classes, all normal training images, seed 0.")
    return fashion_spec()


def reference_choice(where) -> str:
    """The reference set of a folder or zip dataset (see doc_core.data.datasets.resolve_reference)."""
    return where.selectbox("Reference set", REFERENCE_CHOICES, format_func=REFERENCE_LABELS.get,
                           key=state.DS_REF_CHOICE, **PERSIST,
                           help="Labelled images of other classes that keep the features descriptive while DOC "
                                "pulls your normal images together. Auto: the folder's own reference/ when it has "
                                f"one, else none. Built-in Fashion-MNIST: {FASHION_REFERENCE_SIZE:,} clothing images "
                                "of 10 classes. None: "
                                "no labelled images; the features are held close to the pretrained network's instead "
                                "(measured better than the clothing reference set on the magnetic tiles).")


def zip_settings() -> DatasetSpec | None:
    st.file_uploader("Zip file with your images", type=["zip"], key=state.DS_UPLOAD,
                     help="Laid out as shown below; the zip may also hold one top folder around it. "
                     + describe_zip_limits())
    c1, c2 = st.columns([1, 1])
    size = c1.select_slider("Image size (pixels)", [32, 48, 64, 96, 128, 160, 224], key=state.DS_IMAGE_SIZE,
                            **PERSIST, help=IMAGE_SIZE_HELP)
    reference = reference_choice(c2)
    upload = st.session_state.get(state.DS_UPLOAD)
    if upload is None:
        current = state.dataset()
        if current.kind == "folder" and current.label.endswith(".zip"):
            st.caption(f"The active dataset is the zip **{current.label}**; upload another one to replace it.")
        return None
    try:
        root = unpack_upload(upload)
    except DataError as exc:
        st.error(f"{upload.name}: {problem(exc)}")
        return None
    return DatasetSpec.folder(root, size, label=upload.name, reference=reference)


def unpack_upload(upload) -> str:
    """Extract an uploaded zip (safely) into this session's own temporary folder, replacing the session's previous
    zip; returns its dataset root."""
    area = cached.upload_area()
    key = (str(area.path), getattr(upload, "file_id", None) or upload.name)
    done = st.session_state.get(state.DS_UPLOAD_ROOT)
    if done is None or done[:2] != key or not Path(done[2]).is_dir():
        with st.spinner("Unpacking the zip…"):
            st.session_state[state.DS_UPLOAD_ROOT] = (*key, str(area.extract(upload.getvalue())))
    return st.session_state[state.DS_UPLOAD_ROOT][2]


def folder_settings() -> DatasetSpec | None:
    roots = access.server_folders()
    if not roots:
        st.info("Reading folders on the server is turned off. Whoever runs the server can allow it for chosen "
                "folders (`DOC_SERVER_FOLDERS`, see the README).", icon=":material/lock:")
        return None
    allowed = ", ".join(f"`{r}`" for r in roots)
    c1, c2, c3 = st.columns([3, 1, 1.5])
    folder = c1.text_input("Folder on the server", key=state.DS_FOLDER, **PERSIST,
                           placeholder=f"{roots[0]}/my_images",
                           help=f"A folder on the machine that runs this app, laid out as shown below, inside "
                                f"{allowed} (a relative path is taken inside the first).")
    size = c2.select_slider("Image size (pixels)", [32, 48, 64, 96, 128, 160, 224], key=state.DS_IMAGE_SIZE,
                            **PERSIST, help=IMAGE_SIZE_HELP)
    reference = reference_choice(c3)
    folder = folder.strip()
    if not folder:
        return None
    current = state.dataset()
    if current.kind == "folder" and folder == current.root:  # the active dataset (from a run or a checked path)
        return DatasetSpec.folder(current.root, size, label=current.label, reference=reference)
    try:
        return DatasetSpec.folder(resolve_server_folder(folder, roots), size, reference=reference)
    except DataError as exc:
        st.error(f"{exc}\n\nThe active dataset is still: {current.describe()}.")
        return None


def show_counts(spec: DatasetSpec, split) -> None:
    c = split.summary()
    cols = st.columns(5 if c["test unlabelled"] else 4)
    cols[0].metric("Normal training", f"{c['normal training']:,}")
    cols[1].metric("Reference", f"{c['reference']:,}", help=f"{len(split.reference_names)} classes" if
                   split.reference_names else "No labelled reference set")
    cols[2].metric("Test normal", f"{c['test normal']:,}")
    cols[3].metric("Test anomaly", f"{c['test anomaly']:,}")
    if c["test unlabelled"]:
        cols[4].metric("Test unlabelled", f"{c['test unlabelled']:,}")
    rows = cached.counts(spec)
    left, right = st.columns([2, 3], gap="large")
    table = pd.DataFrame(rows).rename(columns={"role": "Role", "class": "Class", "count": "Images"})
    left.dataframe(table, hide_index=True, width="stretch", height=min(35 * (len(table) + 1) + 3, 600),
                   column_config={"Images": st.column_config.NumberColumn(format="localized")})
    right.plotly_chart(charts.role_counts(rows), config=theme.PLOT_CONFIG, key="counts_chart")


def show_samples(spec: DatasetSpec) -> None:
    for role, (images, names) in cached.samples(spec, per_role=8).items():
        st.markdown(f"{theme.role_label(role)} · {len(images)} random examples", unsafe_allow_html=True)
        st.image(images, caption=names, width=84)


page.setup("Dataset")
st.markdown("Choose the images: which are **normal** (to learn), which are **anomalies** (to find in the test set) "
            "and which are **reference** images (labelled images of other classes that keep the features "
            "descriptive; optional for your own images).")

source = st.segmented_control("Source", state.SOURCES, key=state.DS_SOURCE, required=True, **PERSIST)
with st.container(border=True):
    if source == state.SOURCE_FASHION:
        wanted = fashion_settings()
    elif source == state.SOURCE_ZIP and access.read_only():
        access.read_only_note("Uploading a zip")
        wanted = None
    elif source == state.SOURCE_ZIP:
        wanted = zip_settings()
    else:
        wanted = folder_settings()
    if source != state.SOURCE_FASHION:
        st.markdown("Expected layout (only `train/` is required; `reference/` is optional, and without `test/` "
                    "there is nothing to evaluate):")
        st.code(FOLDER_LAYOUT, language=None)

if wanted is not None:
    try:
        cached.split(wanted)
        if wanted != state.dataset():
            state.set_dataset(wanted)
            feedback.note("dataset", "success", f"Active dataset: {wanted.describe()}")
            st.rerun()  # the sidebar, drawn before this, shows the new dataset too
    except DataError as exc:
        state.drop_removed_upload()  # a zip this one replaced cannot stay active
        st.error(f"{problem(exc)}\n\nThe active dataset is still: {state.dataset().describe()}.")

spec = state.dataset()
try:
    split, skipped = cached.split(spec)
except DataError as exc:
    st.error(str(exc))
    st.stop()

st.subheader("Active dataset", anchor=False)
st.markdown(spec.describe())
feedback.show("dataset", inline=False)  # a toast when the dataset just changed (described right above)
reference = status.reference_of(spec)
if reference is not None:
    st.markdown(f"**Reference set: {reference[0]}** · {reference[1]}")
if skipped:
    with st.expander(f"{len(skipped)} file(s) could not be read and were skipped"):
        st.dataframe(pd.DataFrame([{"file": s.path, "reason": s.reason} for s in skipped]), hide_index=True)
if not split.has_test_labels:
    st.warning("The test set has no labelled normal and anomalous images, so ROC curves and AUC cannot be computed. "
               "Add test/normal/ and test/anomaly/ folders to evaluate.")
show_counts(spec, split)
st.subheader("Sample images", anchor=False)
show_samples(spec)
st.page_link(nav.TRAINING, label="Next: train a detector on this dataset", icon=nav.ICONS[nav.TRAINING])

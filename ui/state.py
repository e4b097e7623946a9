"""Every session-state key of the app, with its default, in one place.

Pages never spell a key as a string: they use the constants below (widget ``key=`` arguments included) and the small
accessors for the values that are not widgets (active dataset, active run, this session's training job).
Widget values survive page switches because the widgets are created with ``persist_state="session"``.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from doc_core.data import FASHION_MNIST_CLASSES, SplitConfig
from doc_core.data.datasets import DatasetSpec
from doc_core.model.backbones import BackboneConfig
from doc_core.model.training import TrainConfig

# ---------------------------------------------------------------------------------------------- app state (no widgets)
DATASET = "dataset"        # DatasetSpec: the active dataset (only ever a valid one)
RUN_ID = "run_id"          # str | None: the active run; None means "the newest run on disk"
JOB_ID = "job_id"          # str | None: this session's training job in the process-wide JobRegistry
JOB_HANDLED = "job_handled"  # str | None: id of the job whose end this session has already acted on
FLASH = "flash"            # (kind, text) | None: a message to show once on the next run (e.g. "run deleted")
TOAST = "toast"            # str | None: a short notice to pop up once on whatever page is open
DETAIL = "detail"          # (page, run id, index) | None: the image the detail view (ui.detail) shows, opened from
#                            page "ranked" or "explorer" (index = test index) or "score" (index = the upload's position)
DETAIL_BUTTON = "detail_open_"  # prefix: one "Details" button per tile (page and index follow)
DETAIL_CLOSE = "detail_close"   # the detail view's Close button

# ---------------------------------------------------------------------------------------------- analysts' labels (ui.labelling)
LB_TILE = "lb_tile_"        # prefix: one label control under each tile (page and index follow)
LB_BULK = "lb_bulk_"        # prefix: the label chosen for a whole page / selection (page follows)
LB_BULK_NOTE = "lb_note_"   # prefix: the note for a whole page / selection (page follows)
LB_BULK_APPLY = "lb_apply_"  # prefix: the button that labels a whole page / selection (page follows)
LB_DETAIL = "lb_detail"     # the detail view's label choice
LB_DETAIL_NOTE = "lb_detail_note"  # the detail view's note
LB_DETAIL_SAVE = "lb_detail_save"  # the detail view's Save label button
LB_DETAIL_FOR = "lb_detail_for"    # (run id, image key) the detail view's label widgets were filled for
BANK_ADD = "bank_add_"      # prefix: "Add the N images marked normal to the normal bank" (page follows; ui.bank)
BANK_UNDO = "bank_undo_"    # prefix: its Undo button (page follows)

# ---------------------------------------------------------------------------------------------- Dataset page widgets
DS_SOURCE = "ds_source"
DS_NORMAL = "ds_normal"
DS_ANOMALY = "ds_anomaly"
DS_REFERENCE = "ds_reference"
DS_N_NORMAL = "ds_n_normal"
DS_N_REFERENCE = "ds_n_reference"
DS_SEED = "ds_seed"
DS_FOLDER = "ds_folder"
DS_IMAGE_SIZE = "ds_image_size"
DS_UPLOAD = "ds_upload"
DS_UPLOAD_ROOT = "ds_upload_root"  # (upload folder, upload file id, dataset root): reruns do not unpack again
DS_REF_CHOICE = "ds_ref_choice"  # reference set of a folder or zip: one of doc_core.data.datasets.REFERENCE_CHOICES

SOURCE_FASHION = "Built-in Fashion-MNIST"
SOURCE_ZIP = "Upload a zip"
SOURCE_FOLDER = "Folder on the server"
SOURCES = (SOURCE_FASHION, SOURCE_ZIP, SOURCE_FOLDER)

# ---------------------------------------------------------------------------------------------- Training page widgets
TR_BACKBONE = "tr_backbone"
TR_ALPHA = "tr_alpha"
TR_INPUT_SIZE = "tr_input_size"
TR_LAMBDA = "tr_lambda"
TR_LR = "tr_lr"
TR_EPOCHS = "tr_epochs"
TR_BATCH = "tr_batch"
TR_TRAINABLE = "tr_trainable"
TR_SEED = "tr_seed"
TR_CALIBRATION = "tr_calibration"  # percent of the normal training images held out to set the threshold
TR_NAME = "tr_name"
TR_PRESET = "tr_preset"  # PRESET_AUTO or PRESET_MANUAL
TR_PRESET_FOR = "tr_preset_for"  # dataset kind the preset was defaulted for: a new kind gets its own default
TR_SCORER = "tr_scorer"  # the scorer of a manual run: "knn", "lof" or "patch"
TR_ANOMALIES = "tr_anomalies"  # auto's candidates: one of doc_core.workflow.selection.ANOMALY_KINDS
TR_IMAGE_SCORE = "tr_image_score"  # a manual patch run's image-score rule: one of doc_core.scoring.patch.IMAGE_SCORES
TR_PICK_RUN = "tr_pick_run"  # the Saved runs picker (Make active, Delete)
TR_PICK_FOR = "tr_pick_for"  # the active run the picker was last set to: a new active run moves the picker to it
FOLLOW_JOB = "tr_follow_"  # prefix: one "follow this job" button per job running elsewhere

PRESET_AUTO = "auto (choose by synthetic defects)"
PRESET_MANUAL = "manual"
PRESETS = (PRESET_AUTO, PRESET_MANUAL)
PRESET_CODES = {PRESET_AUTO: "auto", PRESET_MANUAL: "manual"}  # doc_core.workflow.jobs.PRESETS


def default_preset(kind: str) -> str:
    """auto for folder datasets; manual for Fashion-MNIST, where the defaults were measured."""
    return PRESET_AUTO if kind == "folder" else PRESET_MANUAL

# ---------------------------------------------------------------------------------------------- ROC page widgets
ROC_SCORER = "roc_scorer"
ROC_K = "roc_k"
ROC_POLICY = "roc_policy"
ROC_TARGET_FPR = "roc_target_fpr"
ROC_PERCENTILE = "roc_percentile"
ROC_THRESHOLD = "roc_threshold"
ROC_CONTEXT = "roc_context"  # (run id, scorer) the threshold widgets were set up for
ROC_COMPARE_K_KNN = "roc_compare_k_knn"
ROC_COMPARE_K_LOF = "roc_compare_k_lof"
ROC_COMPARE = "roc_compare"  # bool: comparison requested
ROC_LABELS = "roc_labels"  # labels the curves and policies use: LABELS_TEST or LABELS_ANALYSTS
LABELS_TEST = "test"
LABELS_ANALYSTS = "analysts"
CMP_RUN = "cmp_run"  # run id whose method comparison was asked for (Compare methods page)

POLICY_MANUAL = "Manual (slider)"
POLICY_FPR = "Target false-positive rate"
POLICY_F1 = "Best F1 on the test set"
POLICY_PERCENTILE = "Percentile of training scores"
POLICIES = (POLICY_PERCENTILE, POLICY_FPR, POLICY_F1, POLICY_MANUAL)
POLICY_CODES = {POLICY_MANUAL: "manual", POLICY_FPR: "target_fpr", POLICY_F1: "best_f1",
                POLICY_PERCENTILE: "train_percentile"}

SCORER_RUN = "As trained"
SCORER_KNN = "k-NN distance"
SCORER_LOF = "Local Outlier Factor"
SCORERS = (SCORER_RUN, SCORER_KNN, SCORER_LOF)

# ---------------------------------------------------------------------------------------------- Explorer page widgets
EX_POINTS = "ex_points"        # most points embedded per map
EX_TRAIN = "ex_train"          # bool: also embed a sample of the normal training images
EX_COLOR = "ex_color"
EX_MAP = "ex_map"              # heatmap over the selected images: one of the MAP_* below
EX_OPACITY = "ex_opacity"
EX_MAPS = "ex_maps"            # the linked maps' value: the last selection made in any of them
EX_SELECTED = "ex_selected"    # ((run id, points, with training), [row, ...]) | None: the last selection in any map
EX_SORT = "ex_sort"            # order of the selected images: one of doc_core.explain.gallery.SELECTION_ORDERS
EX_PAGE = "ex_page"            # page of the selected images (1-based)
EX_PAGE_SIZE = 12              # selected images per page

COLOR_ROLE = "True label / role"
COLOR_SCORE = "Anomaly score"
COLOR_BY = (COLOR_ROLE, COLOR_SCORE)
EX_POINT_CHOICES = (500, 1000, 2000, 3000)

# ---------------------------------------------------------------------------------------------- Ranked page widgets
RK_VIEW = "rk_view"
RK_LABEL = "rk_label"
RK_SIDE = "rk_side"
RK_ORDER = "rk_order"
RK_PAGE = "rk_page"
RK_PAGE_SIZE = "rk_page_size"
RK_MAP = "rk_map"  # heatmap over the tiles: one of the MAP_* below
RK_OPACITY = "rk_opacity"
RK_QUERY = "rk_query"  # text filter on the images' names (file name and sub-folder, or test index and class)

VIEW_TOP = "Most anomalous anomalies"
VIEW_MISSED = "Anomalies that look normal"
VIEW_ALARMS = "Normal images that look anomalous"
VIEW_CUSTOM = "Any filter"
VIEWS = (VIEW_TOP, VIEW_MISSED, VIEW_ALARMS, VIEW_CUSTOM)
# (labels, side, order) of each preset view; see doc_core.explain.gallery.rank
VIEW_FILTERS = {VIEW_TOP: (["anomaly"], "all", "highest"), VIEW_MISSED: (["anomaly"], "all", "lowest"),
                VIEW_ALARMS: (["normal"], "all", "highest")}
SIDE_LABELS = {"all": "Both sides", "above": "Flagged (above threshold)", "below": "Passed (at or below)"}
ORDER_LABELS = {"highest": "Most anomalous first", "lowest": "Most normal first"}

# heatmap choices (ui.heatmaps): Grad-CAM for any run, the patch defect map for runs trained with the patch scorer
MAP_OFF = "Off"
MAP_GRADCAM = "Grad-CAM"
MAP_PATCH = "Patch defect map"

# ---------------------------------------------------------------------------------------------- Score-images page
UP_FILES = "up_files"
UP_OPACITY = "up_opacity"
UP_MAP = "up_map"  # heatmap of the scored images: MAP_GRADCAM or MAP_PATCH (default set by ui.heatmaps.choose)
UP_DIGESTS = "up_digests"  # {(file id, name, size): SHA-256}: each upload is hashed once (see ui.cached.decoded_upload)

_REF = SplitConfig.tutorial()
_BACKBONE = BackboneConfig()  # the training defaults are doc_core's own
_TRAIN = TrainConfig()
DEFAULTS: dict[str, Any] = {
    DATASET: DatasetSpec.fashion_mnist(),
    RUN_ID: None,
    JOB_ID: None,
    JOB_HANDLED: None,
    FLASH: None,
    TOAST: None,
    DETAIL: None,
    DS_SOURCE: SOURCE_FASHION,
    DS_NORMAL: [FASHION_MNIST_CLASSES[c] for c in _REF.normal_classes],
    DS_ANOMALY: [FASHION_MNIST_CLASSES[c] for c in _REF.anomaly_classes or ()],
    DS_REFERENCE: [FASHION_MNIST_CLASSES[c] for c in _REF.reference_classes or ()],
    DS_N_NORMAL: 0,
    DS_N_REFERENCE: _REF.n_reference,
    DS_SEED: _REF.seed,
    DS_FOLDER: "",
    DS_IMAGE_SIZE: 96,
    DS_REF_CHOICE: "auto",
    TR_BACKBONE: _BACKBONE.name,
    TR_ALPHA: _BACKBONE.alpha,
    TR_INPUT_SIZE: _BACKBONE.input_size,
    TR_LAMBDA: _TRAIN.lam,
    TR_LR: _TRAIN.learning_rate,
    TR_EPOCHS: _TRAIN.epochs,
    TR_BATCH: _TRAIN.batch_size,
    TR_TRAINABLE: "default",
    TR_SEED: _TRAIN.seed,
    TR_CALIBRATION: 10.0,  # doc_core.model.calibration.DEFAULT_CALIBRATION_FRACTION, in percent
    TR_NAME: "",  # empty: the run gets doc_core.workflow.run_names.default_run_name (cleared after each Start)
    TR_PICK_FOR: None,
    TR_PRESET: PRESET_MANUAL,
    TR_PRESET_FOR: None,
    TR_SCORER: "knn",
    TR_ANOMALIES: "any",
    TR_IMAGE_SCORE: "top25",  # doc_core.model.detector.ScorerConfig's default (a test checks they agree)
    ROC_SCORER: SCORER_RUN,
    ROC_K: 5,
    ROC_POLICY: POLICY_PERCENTILE,
    ROC_TARGET_FPR: 5.0,
    ROC_PERCENTILE: 95.0,
    ROC_CONTEXT: None,
    ROC_COMPARE_K_KNN: 1,  # the paper's nearest-neighbour distance
    ROC_COMPARE_K_LOF: 20,
    ROC_COMPARE: False,
    ROC_LABELS: LABELS_TEST,
    CMP_RUN: None,
    EX_POINTS: 2000,
    EX_TRAIN: False,
    EX_COLOR: COLOR_ROLE,
    EX_MAP: MAP_OFF,
    EX_SELECTED: None,
    EX_OPACITY: 0.5,
    EX_SORT: "score_desc",
    EX_PAGE: 1,
    RK_VIEW: VIEW_TOP,
    RK_LABEL: ["anomaly"],
    RK_SIDE: "all",
    RK_ORDER: "highest",
    RK_PAGE: 1,
    RK_PAGE_SIZE: 24,
    RK_MAP: MAP_OFF,
    RK_OPACITY: 0.5,
    RK_QUERY: "",
    UP_OPACITY: 0.5,
}


def init() -> bool:
    """Give every key its default once per session (called first on every page); True for a new session."""
    new = DATASET not in st.session_state
    for key, value in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = value
    drop_removed_upload()
    return new


def drop_removed_upload() -> bool:
    """When the active dataset is an uploaded zip whose folder is gone (the session's folder was removed when its
    connection dropped, or a newer zip replaced it), go back to the default dataset and say so; True if it did."""
    from pathlib import Path

    from doc_core.data.datasets import is_upload_path

    spec = st.session_state.get(DATASET)
    if not (isinstance(spec, DatasetSpec) and spec.kind == "folder" and spec.root and is_upload_path(spec.root)):
        return False
    if Path(spec.root).is_dir():
        return False
    st.session_state[DATASET] = DEFAULTS[DATASET]
    flash("info", f"The uploaded zip {spec.label or ''} is no longer on the server (the uploads of a session are "
                  "removed when its connection ends, and a new zip replaces the previous one). The active dataset is "
                  "the built-in Fashion-MNIST again; upload the zip again to use it.")
    return True


def adopt_dataset(spec: DatasetSpec) -> None:
    """Make ``spec`` the active dataset and show it in the Dataset page's widgets."""
    st.session_state[DATASET] = spec
    if spec.kind == "folder":
        st.session_state[DS_SOURCE] = SOURCE_FOLDER
        st.session_state[DS_FOLDER] = spec.root or ""
        st.session_state[DS_IMAGE_SIZE] = spec.image_size
        st.session_state[DS_REF_CHOICE] = spec.reference
        return
    c = spec.split
    names = lambda ids: [FASHION_MNIST_CLASSES[i] for i in ids or ()]  # noqa: E731
    st.session_state.update({DS_SOURCE: SOURCE_FASHION, DS_NORMAL: names(c.normal_classes),
                             DS_ANOMALY: names(c.anomaly_classes), DS_REFERENCE: names(c.reference_classes),
                             DS_N_NORMAL: c.n_normal or 0, DS_N_REFERENCE: c.n_reference, DS_SEED: c.seed})


def reset(*keys: str) -> None:
    """Put keys back to their defaults (only call before their widgets are drawn, or from a callback)."""
    for key in keys:
        st.session_state[key] = DEFAULTS[key]


def dataset() -> DatasetSpec:
    return st.session_state.get(DATASET) or DEFAULTS[DATASET]


def set_dataset(spec: DatasetSpec) -> None:
    """Make ``spec`` the active dataset; when the active run was trained on another dataset and a saved run on
    ``spec`` exists, the newest such run becomes the active run too (every page and the sidebar follow)."""
    st.session_state[DATASET] = spec
    run = active_run()
    if run is None or is_active_dataset(run.dataset):
        return
    from . import cached

    match = next((r for r in cached.list_runs() if is_active_dataset(r.dataset)), None)
    if match is not None:
        set_run(match.run_id)


def is_active_dataset(described: dict | None) -> bool:
    """True when ``described`` (a run's or a job's ``dataset`` dict, ``DatasetSpec.to_dict`` plus extras) is the
    active dataset; False for another one, or one that cannot be read."""
    if not described or not described.get("kind"):
        return False
    try:
        return DatasetSpec.from_dict(described) == dataset()
    except (ValueError, KeyError, TypeError):
        return False


def chosen_run_id() -> str | None:
    """The run picked in this session, or None (then the newest run is active)."""
    return st.session_state.get(RUN_ID)


def active_run():
    """The active run (:class:`doc_core.workflow.runs.RunSummary`): the one picked in this session if it still exists,
    else the newest run, else None. Every page and the sidebar show this one."""
    from . import cached  # cached imports this module

    return cached.active_run(chosen_run_id())


def set_run(run_id: str | None) -> None:
    st.session_state[RUN_ID] = run_id


def follow_active_run(picker_key: str, active_id: str | None) -> None:
    """Point the run picker ``picker_key`` at the active run whenever the active run changes (a run finished, another
    was made active, one was deleted); between changes the picker keeps what the user picked in it. Call before the
    picker is drawn."""
    if st.session_state.get(TR_PICK_FOR) != active_id or st.session_state.get(picker_key) is None:
        st.session_state[TR_PICK_FOR] = active_id
        st.session_state[picker_key] = active_id


def job_id() -> str | None:
    return st.session_state.get(JOB_ID)


def set_job(job_id_: str | None) -> None:
    st.session_state[JOB_ID] = job_id_


def flash(kind: str, text: str) -> None:
    """Show ``text`` as a ``kind`` ("success", "info", "warning") message at the top of the next run."""
    st.session_state[FLASH] = (kind, text)


def pop_flash() -> tuple[str, str] | None:
    msg = st.session_state.get(FLASH)
    st.session_state[FLASH] = None
    return msg


def toast(text: str) -> None:
    st.session_state[TOAST] = text


def pop_toast() -> str | None:
    text = st.session_state.get(TOAST)
    st.session_state[TOAST] = None
    return text

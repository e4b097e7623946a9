"""The app's pages: files, titles and icons, defined once for the sidebar navigation and st.page_link."""

from __future__ import annotations

HOME = "app.py"
DATASET = "pages/1_dataset.py"
TRAINING = "pages/2_training.py"
ROC = "pages/3_roc_threshold.py"

PAGES = (HOME, DATASET, TRAINING, ROC)
TITLES = {HOME: "Home", DATASET: "Dataset", TRAINING: "Training", ROC: "ROC and threshold"}
ICONS = {HOME: ":material/home:", DATASET: ":material/photo_library:", TRAINING: ":material/model_training:",
         ROC: ":material/query_stats:"}

"""The app's pages: files, titles and icons, defined once for the sidebar navigation and st.page_link."""

from __future__ import annotations

HOME = "app.py"
DATASET = "pages/1_dataset.py"
TRAINING = "pages/2_training.py"
ROC = "pages/3_roc_threshold.py"
EXPLORER = "pages/4_embedding_explorer.py"
RANKED = "pages/5_ranked_anomalies.py"
SCORE = "pages/6_score_images.py"
COMPARE = "pages/7_compare_methods.py"

PAGES = (HOME, DATASET, TRAINING, ROC, EXPLORER, RANKED, SCORE, COMPARE)
TITLES = {HOME: "Home", DATASET: "Dataset", TRAINING: "Training", ROC: "ROC and threshold",
          EXPLORER: "Embedding explorer", RANKED: "Ranked anomalies", SCORE: "Score new images",
          COMPARE: "Compare methods"}
ICONS = {HOME: ":material/home:", DATASET: ":material/photo_library:", TRAINING: ":material/model_training:",
         ROC: ":material/query_stats:", EXPLORER: ":material/scatter_plot:", RANKED: ":material/leaderboard:",
         SCORE: ":material/upload_file:", COMPARE: ":material/compare_arrows:"}

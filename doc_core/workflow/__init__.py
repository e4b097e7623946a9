"""Workflow: what happens around a training run, shared by the CLI and the dashboard.

====================  ===============================================================================================
``runs``              the runs folder: finished training runs on disk, listed, loaded and removed safely
``jobs``              background training jobs a UI can watch, stop and collect
``run_names``         default names of runs (dataset and start time, never repeated)
``selection``         label-free model selection: synthetic defects and the ``auto`` preset
``labels``            analysts' labels (normal / anomaly / unsure per run and image) in SQLite, CSV export and import
``run_labels``        a run's labels laid over its test images (counts, selections, ROC labels, images for the bank)
``bank_growth``       confirmed normal images join a run's memory bank without retraining; undo and history
``detector_preload``  a run's detector loaded once in a background thread, shared by every page that needs it
``artifacts``         reading saved JSON and ``.npz`` files safely (sizes, types and ranges checked first)
``output_folders``    folders and single files written as a whole: checked first, then renamed into place
====================  ===============================================================================================

Import the modules by their full path (``from doc_core.workflow.runs import save_run``).
"""

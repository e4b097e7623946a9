"""Evaluation: how good a detector is, measured.

====================  ===============================================================================================
``metrics``           ROC/PR curves, threshold policies, metrics at a threshold
``benchmark``         the Fashion-MNIST protocols (tutorial, one-vs-rest) with baselines
``folder_benchmark``  any image folder with test labels, and the magnetic-tile defects (image and pixel AUROC)
``knn_scaling``       k-NN scoring time against bank size: exact numpy against faiss
``validation``        default hyper-parameters chosen on a validation split of the training set
``report``            ROC curves of a benchmark result on one chart (HTML)
``autoencoder``       the convolutional autoencoder baseline
====================  ===============================================================================================

Import the modules by their full path (``from doc_core.evaluation.metrics import roc_auc``).
"""

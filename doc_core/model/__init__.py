"""Model: the DOC network and the detector built on it.

===============  ====================================================================================================
``backbones``    pretrained CNNs cut at a feature layer, split into a frozen trunk and a trainable tail
``losses``       compactness, descriptiveness and preservation losses
``training``     joint DOC training (:class:`DOCTrainer`, :class:`TrainConfig`)
``distribute``   data-parallel training under a ``tf.distribute`` strategy
``calibration``  the seeded calibration slice of the normal images that sets the threshold (in no bank)
``detector``     :class:`DOCDetector`: fine-tuned backbone, memory bank, scorer, threshold; save and load
===============  ====================================================================================================

Import the modules by their full path (``from doc_core.model.detector import DOCDetector``); the most used names are
also importable from :mod:`doc_core` itself. Importing any of them loads TensorFlow.
"""

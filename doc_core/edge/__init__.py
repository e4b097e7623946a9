"""Edge: a fitted detector as a self-contained LiteRT bundle, scored without TensorFlow.

===============  ====================================================================================================
``export``       :func:`export_bundle`: the model as LiteRT, the memory bank, ``bundle.json`` and a copy of the scorer
``edge_scorer``  the bundle's scorer (copied into every bundle as ``scorer.py``): standard library and numpy only
===============  ====================================================================================================

Import the modules by their full path (``from doc_core.edge.export import export_bundle``).
"""

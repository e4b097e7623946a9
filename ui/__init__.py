"""The Streamlit side of DOC Explorer: session state, cached loaders, charts and shared page parts.

Pages (app.py and pages/) stay thin and read like a description of the UI; the work is done by doc_core.
"""

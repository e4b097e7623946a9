"""Make Streamlit's script runner safe for TensorFlow training in background threads.

After every script run (and a running training page reruns a fragment every second) Streamlit calls
``keras.backend.clear_session()``, which resets Keras' global state, resets TensorFlow's default graph and runs a full
garbage collection, and with ``runner.postScriptGC`` it collects again. Doing that while a training thread traces or
runs a ``tf.function`` can deadlock TensorFlow (seen here with two sessions training at once: every thread stuck, one
in ``gc.collect`` and the others in ``_create_c_op``) and would wipe state the training thread relies on.

The app therefore turns ``runner.postScriptGC`` off (.streamlit/config.toml) and :func:`keep_keras_session` stops the
per-run ``clear_session``. Nothing is lost: the app builds its models once (cached) instead of once per run, which is
what that clean-up is meant for.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def keep_keras_session() -> bool:
    """Stop Streamlit from clearing the Keras session after each script run; True if the hook was found."""
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:  # pragma: no cover - a Streamlit without that module has no such clean-up either
        return False
    original = getattr(script_runner, "_clean_problem_modules", None)
    if original is None:
        return False
    if getattr(original, "_doc_explorer", False):
        return True

    def _clean_problem_modules() -> None:  # matplotlib figures are still closed; Keras is left alone
        import sys

        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            try:
                plt.close("all")
            except Exception:  # noqa: BLE001 - as Streamlit's own clean-up, never fail a run over this
                log.debug("could not close matplotlib figures", exc_info=True)

    _clean_problem_modules._doc_explorer = True  # type: ignore[attr-defined]
    script_runner._clean_problem_modules = _clean_problem_modules
    try:  # also when started without the project's .streamlit/config.toml (from another folder)
        from streamlit import config

        if config.get_option("runner.postScriptGC"):
            config._set_option("runner.postScriptGC", False, "ui/runtime.py")
    except Exception:  # noqa: BLE001 - an internal API; the config file sets the same
        log.debug("could not turn off runner.postScriptGC", exc_info=True)
    return True

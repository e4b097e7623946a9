"""The heatmap choice of the ranked gallery, the explorer's selection and the score-images page: Grad-CAM (any run)
or the patch scorer's defect map (runs trained with the patch scorer), and the maps themselves in [0, 1].

Grad-CAM is normalised per image (its hottest region is always red); the patch defect map is drawn on one fixed
scale for every image (:func:`doc_core.explain.gradcam.map_to_unit`): blue at the lowest training score, red at the
run's threshold, so an image that looks normal stays blue instead of showing a made-up hot spot.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from doc_core.workflow import runs

from . import cached, state

OFF, GRADCAM, PATCH = state.MAP_OFF, state.MAP_GRADCAM, state.MAP_PATCH
GRADCAM_HELP = ("Grad-CAM of the k-NN anomaly score: red marks the regions that push the image away from its nearest "
                "normal training images, blue the regions that do not. Scaled per image: every map has a red spot.")
PATCH_HELP = ("Patch defect map: each patch's distance to its nearest normal training patch, on one scale for every "
              "image (blue = the lowest training score, red = the threshold or above), so a normal image stays blue.")
NO_PATCH = ("Patch defect maps come with runs trained with the patch scorer (Training page, Scorer: patch); this run "
            "scores whole images.")


def is_patch_run(run: runs.RunSummary) -> bool:
    return run.scorer.name == "patch"


def options(run: runs.RunSummary, with_off: bool = True) -> list[str]:
    """The heatmaps this run can show: Grad-CAM always, the patch defect map for patch runs."""
    return ([OFF] if with_off else []) + [GRADCAM] + ([PATCH] if is_patch_run(run) else [])


def choose(where, run: runs.RunSummary, key: str, with_off: bool = True, label: str = "Heatmap") -> str:
    """Draw the choice into ``where`` (a container or column) and return it.

    A remembered choice this run cannot show (a patch map after switching to a run without one) falls back to the
    run's default: the patch map for patch runs when there is no "Off", else the first option.
    """
    opts = options(run, with_off)
    if st.session_state.get(key) not in opts:
        st.session_state[key] = opts[0] if with_off else opts[-1]
    helps = [GRADCAM_HELP] + ([PATCH_HELP] if is_patch_run(run) else [NO_PATCH])
    return where.radio(label, opts, key=key, horizontal=True, persist_state="session", help=" ".join(helps))


def maps(run: runs.RunSummary, images: np.ndarray, choice: str) -> np.ndarray | None:
    """The heatmaps of ``images`` (uint8 (n, h, w, c)) for ``choice``: float32 (n, h, w) in [0, 1], or None (Off)."""
    if choice == GRADCAM:
        return cached.heatmaps(run, images)
    if choice == PATCH and is_patch_run(run):
        return cached.patch_maps(run, images)
    return None


def note(run: runs.RunSummary, choice: str) -> str:
    """One line on what the shown maps mean (the patch map's fixed scale in numbers)."""
    if choice == PATCH and is_patch_run(run):
        low, high = cached.patch_map_scale(run)
        return (f"Patch defect map on one scale for every image: blue = {low:.4g} (the lowest training score), red = "
                f"{high:.4g} (the threshold) or above.")
    if choice == GRADCAM:
        return "Grad-CAM, scaled per image: red is the region that raises the score most, even in a normal image."
    return ""

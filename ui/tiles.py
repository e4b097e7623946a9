"""Image tiles shared by the explorer, the ranked gallery and the upload page: a grid of thumbnails with coloured
captions, heatmap overlays on demand (ui.heatmaps), and rows of nearest normal training images."""

from __future__ import annotations

import html

import numpy as np
import streamlit as st

from doc_core.explain import overlay
from doc_core.explain.gallery import enlarge

from . import theme

TILE_PX = 112


def verdict(score: float, threshold: float) -> str:
    """ "flagged" or "passed" in the anomaly / normal colour."""
    return theme.colored("flagged", theme.ANOMALY) if score > threshold else theme.colored("passed", theme.NORMAL)


def label_text(label: int, class_name: str = "") -> str:
    role = {1: "test anomaly", 0: "test normal"}.get(int(label), "test unlabelled")
    word = {1: "anomaly", 0: "normal"}.get(int(label), "unlabelled")
    name = f" · {html.escape(class_name)}" if class_name and class_name != word else ""  # no "anomaly · anomaly"
    return theme.colored(word, theme.ROLE_COLORS[role]) + name


def name_text(name: str) -> str:
    """An image's name (:func:`doc_core.explain.gallery.identities`) as caption HTML: escaped, breakable anywhere
    so a long file name wraps inside its tile, with the whole name as its tooltip."""
    safe = html.escape(str(name), quote=True)
    return f"<span title='{safe}' style='overflow-wrap:anywhere;font-weight:600'>{safe}</span>"


def picture(image: np.ndarray, heatmap: np.ndarray | None = None, opacity: float = 0.5, px: int = TILE_PX):
    """A crisp enlarged thumbnail, with a heatmap (values in [0, 1]) drawn over it when given."""
    big = enlarge(image, px)
    if heatmap is None:
        return big
    return overlay(big, heatmap, opacity)


def grid(images, captions: list[str], per_row: int = 6, px: int = TILE_PX, heatmaps=None, opacity: float = 0.5,
         below=None):
    """Images in rows of ``per_row`` with a small markdown caption under each (HTML colours allowed); ``below``, a
    function ``(column, i)``, draws more under tile ``i`` (e.g. :func:`ui.detail.opener`'s Details button)."""
    for start in range(0, len(images), per_row):
        cols = st.columns(per_row, gap="small")
        for j, col in enumerate(cols):
            i = start + j
            if i >= len(images):
                break
            heat = None if heatmaps is None else heatmaps[i]
            col.image(picture(images[i], heat, opacity, px), width=px)
            col.markdown(f"<div style='font-size:0.8rem;line-height:1.3;margin-bottom:0.5rem;"
                         f"overflow-wrap:anywhere'>{captions[i]}</div>",
                         unsafe_allow_html=True)
            if below is not None:
                below(col, i)


def neighbours(train_images: np.ndarray, idx: np.ndarray, dist: np.ndarray, px: int = 72,
               names: list[str] | None = None) -> None:
    """One row of nearest normal images ``train_images[idx]`` with their distances, named ``names`` (default
    ``train #<idx>``; :func:`ui.bank.neighbours` names the rows of a grown memory bank)."""
    names = [f"train #{int(i)}" for i in idx] if names is None else names
    grid([train_images[i] for i in idx], [f"{n} · d {float(d):.3g}" for n, d in zip(names, dist)],
         per_row=max(len(idx), 5), px=px)


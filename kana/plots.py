"""Pictures logged to MLflow: class balance, sample grids, fit histories, misclassified samples.

Labels use romanised char_ids: matplotlib's default fonts have no kana glyphs.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def class_balance_figure(counts: pd.DataFrame):
    """Stacked bars of kept samples per class and split (`counts`: index char_id, columns splits)."""
    fig, ax = plt.subplots(figsize=(max(8, len(counts) * 0.18), 4))
    counts.plot.bar(stacked=True, ax=ax, width=0.85)
    ax.set_ylabel("samples")
    ax.set_title("Kept samples per class and split")
    ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    return fig


def image_grid(images: list[np.ndarray], captions: list[str], cols: int = 12, scale: int = 3) -> Image.Image:
    """Tile uint8 rasters (ink 255 on 0) into one picture, ink dark on white, with captions."""
    if not images:
        return Image.new("L", (64, 16), 255)
    h, w = images[0].shape
    cw, ch = w * scale, h * scale + 12
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("L", (cols * cw, rows * ch), 255)
    draw = ImageDraw.Draw(grid)
    for k, (img, cap) in enumerate(zip(images, captions)):
        r, c = divmod(k, cols)
        tile = Image.fromarray(255 - img).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (c * cw, r * ch))
        draw.text((c * cw + 2, r * ch + h * scale), cap[:16], fill=0)
    return grid


def fit_history_figure(history: dict[str, list[float]], title: str):
    """Loss and accuracy per epoch, train vs validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        if key in history:
            ax.plot(epochs, history[key], "o-", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "o-", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

"""Matplotlib for files, never a window: the project draws PNGs on machines without a display."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def headless_pyplot():
    """matplotlib.pyplot on the Agg backend (chosen before pyplot loads, so no GUI toolkit is tried)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(items: Sequence, draw: Callable, title: str, *, x_label: str, y_label: str, width: float = 3.2):
    """One square panel per item, four to a row, each with the diagonal y = x: `draw(ax, item)`
    plots it and returns the panel's title. Returns the figure, made without pyplot, which would keep
    every figure until it is closed (a reused sweep trial process draws one per trial)."""
    from matplotlib.figure import Figure

    cols = min(4, max(len(items), 1))
    rows = max(1, -(-len(items) // cols))
    fig = Figure(figsize=(width * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, item in zip(axes.flat, items):
        ax.set_visible(True)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(draw(ax, item), fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylabel(y_label, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

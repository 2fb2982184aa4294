"""Matplotlib for files, never a window: the project draws PNGs on machines without a display."""

from __future__ import annotations


def headless_pyplot():
    """matplotlib.pyplot on the Agg backend (chosen before pyplot loads, so no GUI toolkit is tried)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

"""Figures for every plot of the package: matplotlib's object-oriented API on the Agg canvas
(never ``pyplot``, whose global figure registry belongs to one thread), written atomically.

matplotlib is not thread-safe: its mathtext parser (used for log-axis tick labels such as
10⁻¹) is shared by all figures, and two figures drawn at once from different threads fail
with a ``ParseException``. The experiment writes learning curves from its worker threads, so
``save_figure`` draws one figure at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scm.io import write_atomic

#: Resolution of every PNG written (dots per inch).
DPI = 110

_DRAWING = threading.Lock()


def new_figure(n_panels: int, width: float = 4.2, height: float = 3.4,
               columns: int | None = None) -> tuple[Figure, list]:
    """A figure of ``n_panels`` axes, each ``width`` × ``height`` inches, side by side (in
    rows of ``columns`` when given; unused cells are hidden), laid out (constrained) when it
    is drawn."""
    columns = n_panels if columns is None else min(columns, n_panels)
    rows = -(-n_panels // columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for unused in axes[n_panels:]:
        unused.set_visible(False)
    return figure, axes[:n_panels]


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Draw ``figure`` and write it to ``path`` as PNG, atomically and one figure at a time."""
    with _DRAWING:
        return write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=DPI,
                                                                   format="png"))


__all__ = ["DPI", "new_figure", "save_figure"]

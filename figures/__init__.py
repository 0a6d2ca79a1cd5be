"""Every figure, as functions that return ``matplotlib.figure.Figure`` (imports theory/ only).

Each topic module defines ``FIGURES``: a dict name -> zero-argument callable that builds its figure
from built-in, deterministic inputs; the functions themselves take explicit arguments for use on
any instance. :mod:`.bridge` draws the bridge experiment from its result dict
(``RESULT_FIGURES``). :func:`write_figure` saves a figure as PNG and PDF, each file whole.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from . import (  # noqa: E402 - after selecting the Agg backend
  dynamics,
  recipes,
  theorems,
  tree_fixed_points,
  tree_hints,
  tree_lengths,
  tree_sft_length,
)
from .output import write_figure  # noqa: E402

__all__ = ["all_figures", "write_figure"]


def all_figures() -> dict:
  """name -> zero-argument callable returning a Figure, over every topic module."""
  out = {}
  for module in (theorems, dynamics, recipes, tree_fixed_points, tree_sft_length, tree_lengths,
                 tree_hints):
    out.update(module.FIGURES)
  return out

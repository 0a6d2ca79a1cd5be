"""Every figure, as functions that return ``matplotlib.figure.Figure``.

Each module in ``FIGURE_MODULES`` defines ``FIGURES``: a dict name -> zero-argument callable that
builds its figure from built-in, deterministic inputs (``nondecoupling figures`` saves them all as
PNG and PDF). The functions themselves take explicit arguments for use on any instance.
"""

from __future__ import annotations

import importlib

import matplotlib

matplotlib.use("Agg")

FIGURE_MODULES = (
    "figures.theorems",   # C1 against beta; RL-then-SFT (C3/C4)
    "figures.dynamics",   # flows, pipelines, PL, gradient cosine, shared parameters
    "figures.recipes",    # the frontier, the RL path and every recipe's end point
    "figures.bridge",     # the CoLA experiment in the shape of the paper's Fig. 3
)


def all_figures() -> dict:
  """name -> zero-argument callable returning a Figure, over every figure module."""
  out = {}
  for name in FIGURE_MODULES:
    out.update(importlib.import_module(name).FIGURES)
  return out

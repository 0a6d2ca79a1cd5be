"""The CoLA experiment in the shape of the paper's Fig. 3 (this project's linear-head reproduction).

- ``fig3a_sft_then_rl(result)``: held-out SFT loss along SFT-then-RL, the phase boundary, the
  base-model level (paper Fig. 3a: "SFT loss climbs once RL starts").
- ``fig3b_rl_then_sft(result)``: held-out mean@1 reward (±1) along RL-then-SFT, the phase boundary,
  the base-model level (paper Fig. 3b: "reward collapses once SFT starts").

``result`` is the dict the bridge experiment returns (or the ``experiment.json`` it is saved as);
`nondecoupling figures` draws both from one deterministic run of the bridge demo (a small random
Qwen3: random weights are not a language model).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["fig3a_sft_then_rl", "fig3b_rl_then_sft", "RESULT_FIGURES"]

_PHASE_COLORS = {"sft": "#dbe9f6", "rl": "#fde3cf"}


def _pipeline_figure(result: dict, pipeline: str, metric: str, ylabel: str, title: str,
                     extra: tuple[str, str] | None = None) -> Figure:
  pipe = result["pipelines"][pipeline]
  y = np.asarray(pipe["curves"][metric], float)
  steps = np.arange(len(y))
  boundary = int(pipe["boundary"])
  first, second = ("sft", "rl") if pipeline == "sft_then_rl" else ("rl", "sft")
  fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
  ax.axvspan(0, boundary, color=_PHASE_COLORS[first], lw=0, label=f"{first.upper()} phase")
  ax.axvspan(boundary, max(len(y) - 1, boundary + 1), color=_PHASE_COLORS[second], lw=0,
             label=f"{second.upper()} phase")
  ax.plot(steps, y, color="#1f4e79", lw=1.8, label=ylabel)
  if extra is not None:
    key, lab = extra
    e = np.asarray(pipe["curves"][key], float)
    ax.plot(steps, 2 * e - 1, color="#7f7f7f", lw=1.0, ls=":", label=lab)
  ax.axhline(result["base"][metric], color="#c00000", ls="--", lw=1.2,
             label="base model (linear head at init)")
  full = result.get("base_full_label")
  if full is not None and metric in full:
    ax.axhline(full[metric], color="#c00000", ls=":", lw=1.0,
               label="base model (full label sequences)")
  ax.axvline(boundary, color="k", lw=0.8)
  ax.set_xlabel("training step")
  ax.set_ylabel(ylabel)
  sizes = result.get("sizes", {})
  ax.set_title(f"{title}\nthis project's linear-head run (train {sizes.get('train', '?')}, "
               f"held-out {sizes.get('test', '?')}, β = {result['settings']['beta']:g})",
               fontsize=9)
  ax.set_xlim(0, max(len(y) - 1, 1))
  ax.legend(fontsize=7, loc="best")
  return fig


def fig3a_sft_then_rl(result: dict) -> Figure:
  """Held-out SFT loss along SFT-then-RL (the shape of the paper's Fig. 3a)."""
  return _pipeline_figure(result, "sft_then_rl", "test_sft_loss", "held-out SFT loss (nats)",
                          "SFT then RL: held-out SFT loss (cf. paper Fig. 3a)")


def fig3b_rl_then_sft(result: dict) -> Figure:
  """Held-out mean@1 reward along RL-then-SFT (the shape of the paper's Fig. 3b)."""
  return _pipeline_figure(result, "rl_then_sft", "test_reward", "held-out mean@1 reward (±1)",
                          "RL then SFT: held-out mean@1 reward (cf. paper Fig. 3b)",
                          extra=("test_accuracy", "2·greedy accuracy − 1"))


RESULT_FIGURES = {"fig3a_sft_then_rl": fig3a_sft_then_rl, "fig3b_rl_then_sft": fig3b_rl_then_sft}

"""The SFT-loss/reward frontier (this project's D4), the exact RL path π*_β(d) and every fusion
recipe's end point, on one plane."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..theory import frontier as fr, objectives as obj, recipes as rc
from ..theory.instance import make_instance

__all__ = ["FIGURES", "demo_instance", "frontier_with_recipes", "DEFAULT_RECIPES"]

DEFAULT_RECIPES = ("sft", "reinforce", "grpo", "dr_grpo", "ppo_clip", "hpt", "luffy", "srft",
                   "relift")


def demo_instance():
  """A small deterministic instance: ±1 rewards, noisy data, a correct response off supp d.

  Prompt 0: the data is split between the correct response and a wrong one. Prompt 1: the data
  never shows the correct response (it lies outside supp d, where the frontier can move mass and
  the RL path from d cannot). Prompt 2: clean data on the correct response. The reference mixes
  the data with the uniform distribution, so the recipes can reach every response.
  """
  data = np.array([[0.6, 0.4, 0.0, 0.0, 0.0],
                   [0.0, 0.5, 0.3, 0.2, 0.0],
                   [0.0, 0.0, 0.9, 0.1, 0.0]])
  reward = np.array([[1.0, -1.0, -1.0, -1.0, -1.0],
                     [1.0, -1.0, -1.0, -1.0, -1.0],
                     [-1.0, -1.0, 1.0, -1.0, -1.0]])
  reference = 0.8 * data + 0.2 / 5
  return make_instance([0.4, 0.3, 0.3], data, reward, 0.2, reference=reference)


def frontier_with_recipes(inst=None, recipes=DEFAULT_RECIPES, steps: int = 150, lr: float = 2.0,
                          betas=None, lambdas=None):
  """SFT loss against reward: the exact frontier, the RL path π*_β(d) and recipe end points.

  Args:
    inst: instance (default: :func:`demo_instance`).
    recipes: names in ``theory.recipes.RECIPES`` to train from θ0 = log ρ with their defaults.
    steps, lr: discrete ascent steps of each recipe's exact field.
    betas: β values of the RL path (default: 30 values from 1e-2 to 1e2).
    lambdas: λ values of the frontier (default: 0 and 60 values from 1e-3 to 1e4).

  Returns:
    matplotlib Figure.
  """
  inst = demo_instance() if inst is None else inst
  betas = np.geomspace(1e-2, 1e2, 30) if betas is None else np.asarray(betas)
  lambdas = (np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 60)]) if lambdas is None
             else np.asarray(lambdas))
  l_front, j_front = map(np.asarray, fr.frontier_curve(inst, lambdas))
  l_rl, j_rl = map(np.asarray, fr.rl_path_curve(inst, betas))
  regret_rl = np.asarray(fr.rl_path_regret(inst, betas))

  fig, ax = plt.subplots(figsize=(7.5, 5.2), constrained_layout=True)
  ax.plot(j_front, l_front, color="black", lw=2, label="exact frontier min L s.t. J ≥ J*")
  ax.plot(j_rl, l_rl, color="tab:blue", ls="--", lw=1.5,
          label=f"exact RL path π*_β(d), β ∈ [{betas.min():g}, {betas.max():g}] "
                f"(max regret {regret_rl.max():.2f} nats)")
  for b in (0.1, 1.0, 10.0):
    if betas.min() <= b <= betas.max():
      lp = fr.rl_path_policy(inst, b)
      ax.annotate(f"β={b:g}", (float(obj.reward(inst, lp)), float(obj.sft_loss(inst, lp))),
                  textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue")
  start = obj.policy_log_probs(inst, obj.initial_logits(inst))
  ax.scatter([float(obj.reward(inst, start))], [float(obj.sft_loss(inst, start))], marker="s",
             color="gray", zorder=3, label="start θ0 = log ρ")
  cmap = plt.get_cmap("tab10")
  for i, name in enumerate(recipes):
    log_pi, _ = rc.train_recipe(inst, name, steps, lr)
    j_end, l_end = float(obj.reward(inst, log_pi)), float(obj.sft_loss(inst, log_pi))
    reg = float(fr.decoupling_regret(inst, log_pi))
    ax.scatter([j_end], [l_end], color=cmap(i % 10), zorder=4, s=28,
               label=f"{name} (regret {reg:.3f})")
  l_d = float(obj.sft_optimum_loss(inst))
  ax.axhline(l_d, color="gray", lw=0.8, ls=":")
  ax.set_xlabel("reward J(π)")
  ax.set_ylabel("SFT loss L(π) (nats)")
  top = max(np.max(l_rl[np.isfinite(l_rl)]), l_d) if np.any(np.isfinite(l_rl)) else l_d
  ax.set_ylim(l_d - 0.1, min(top, l_d + 6.0) + 0.3)
  ax.set_title(f"SFT-reward frontier (this project's D4) vs exact RL and recipes after {steps} "
               f"steps (lr {lr:g})", fontsize=9)
  ax.legend(fontsize=7, loc="upper left")
  return fig


FIGURES = {"recipes_frontier": frontier_with_recipes}

"""G4 as β varies: the k1/k2/k3 fixed points against the Gibbs tilt on an example tree (ours).

With the exact policy gradient of J, k1 in the reward ends at the Gibbs tilt π*_β; k2 and k3 in
the loss end elsewhere at depth ≥ 2 (THEORY.md G4, this project's). The figure shows their SFT
loss, reward, J_β and frontier regret (this project's D4 on the leaf set) against β.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..theory.tree.build import PromptTree, build_tree
from ..theory.tree.fixed_points import CONSTRUCTS, closed_form_fixed_point, fixed_point_report
from ..theory.tree.instance import TreeInstance
from ..theory.tree.rewards import final_answer_reward

__all__ = ["example_tree", "fixed_points_against_beta", "FIGURES"]

LABELS = {"k1_reward": r"k1 in the reward = Gibbs tilt $\pi^*_\beta$",
          "k2_loss": "k2 in the loss", "k3_loss": "k3 in the loss"}
PANELS = (("sft_loss", "SFT loss L (nats)"), ("reward", "reward J"),
          ("regularized_reward", r"$J_\beta$"), ("regret", "frontier regret (nats, D4)"))


def example_tree(beta: float = 0.5) -> TreeInstance:
  """One prompt, tokens (EOS, think, 7, 8), T = 3: reward 1 when the answer before EOS is 7.

  >>> example_tree().depth
  3
  """
  rows = {(): [0.0, 0.6, 0.2, 0.2], (1,): [0.0, 0.2, 0.4, 0.4], (2,): [0.9, 0.1, 0.0, 0.0],
          (3,): [0.9, 0.1, 0.0, 0.0], (1, 1): [0.0, 0.0, 0.5, 0.5], (1, 2): [1.0, 0.0, 0.0, 0.0],
          (1, 3): [1.0, 0.0, 0.0, 0.0], (2, 1): [0.0, 0.0, 0.5, 0.5],
          (3, 1): [0.0, 0.0, 0.5, 0.5]}
  data = {(1, 2, 0): 0.5, (2, 0): 0.5}
  prompt = PromptTree(4, 0, 3, rows, data, final_answer_reward(answer=2, eos=0))
  tree, _ = build_tree([prompt], [1.0], beta)
  return jax.tree.map(jnp.asarray, tree)


@functools.partial(jax.jit, static_argnums=1)
def _reports(trees: TreeInstance, construct: str) -> dict:
  """fixed_point_report of the closed-form fixed point of ``construct``, for each tree (one jit)."""
  return jax.vmap(lambda t: fixed_point_report(t, closed_form_fixed_point(t, construct)))(trees)


def fixed_points_against_beta(tree: TreeInstance | None = None, betas=None) -> Figure:
  """SFT loss, reward, J_β and regret of the three fixed points (closed forms) against β.

  Args:
    tree: an unbatched tree (default :func:`example_tree`); its β is replaced by each value.
    betas: [K] values of β (default 0.05 to 10, log-spaced).

  Returns:
    The figure.
  """
  tree = example_tree() if tree is None else tree
  betas = np.logspace(np.log10(0.05), 1.0, 41) if betas is None else np.asarray(betas)
  at = jax.vmap(lambda b: dataclasses.replace(tree, beta=b))(jnp.asarray(betas))
  reports = {c: _reports(at, c) for c in CONSTRUCTS}
  fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.4), sharex=True)
  styles = {"k1_reward": ("k", "-"), "k2_loss": ("tab:blue", "--"), "k3_loss": ("tab:red", ":")}
  for ax, (key, label) in zip(axes.ravel(), PANELS):
    for c in CONSTRUCTS:
      color, ls = styles[c]
      ax.plot(betas, np.asarray(reports[c][key]), ls, color=color, lw=2, label=LABELS[c])
    ax.set_xscale("log")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.25)
  for ax in axes[1]:
    ax.set_xlabel(r"KL coefficient $\beta$")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle("Token level (this project's G4): fixed points of the KL placements vs the Gibbs "
               "tilt\n(exact policy gradient of J; example tree: final-answer reward, T = 3)",
               fontsize=10)
  fig.tight_layout()
  return fig


FIGURES = {"tree_fixed_points": fixed_points_against_beta}

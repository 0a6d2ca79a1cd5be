"""Hint and prefix recipes on a token tree against the exact frontier (this project's figure).

UFT (hint probability p), Prefix-RFT (mean prefix ratio m) and BREAD (group size G) are trained by
exact-field ascent (every expectation over groups, hints, prefixes and anchors taken exactly,
:mod:`nondecoupling.theory.tree.recipes`) on one example prompt tree, and their end points
(SFT loss, reward) are drawn against the exact Pareto frontier of the tree's leaf set (THEORY.md
D4 on the leaves, this project's). ``hint_outcomes`` returns the numbers: SFT loss, reward and
decoupling regret of each run. ``FIGURES`` maps the figure's name to a zero-argument builder.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..theory import objectives as obj
from ..theory.frontier import decoupling_regret, frontier_curve
from ..theory.tree.atomic import leaf_instance, leaf_policy
from ..theory.tree.build import PromptTree, build_tree
from ..theory.tree.policy import initial_logits, policy_log_probs
from ..theory.tree.recipes.bread import TreeBREADConfig
from ..theory.tree.recipes.demo_family import DEMO_TREE_RECIPES
from ..theory.tree.recipes.prefix_rft import TreePrefixRFTConfig
from ..theory.tree.recipes.uft import TreeUFTConfig

__all__ = ["example_tree", "train_exact", "hint_outcomes", "hints_against_frontier",
           "DEFAULT_SETTINGS", "FIGURES"]

DEFAULT_SETTINGS = (
    ("uft", "p", (0.0, 0.5, 0.95),
     lambda v: TreeUFTConfig(hint_prob=v, use_std=False, sft_coef=0.1)),
    ("prefix_rft", "m", (0.05, 0.5, 0.95), lambda v: TreePrefixRFTConfig(n_on=3, ratio_mean=v)),
    ("bread", "G", (1, 2, 4), lambda v: TreeBREADConfig(n_rollouts=v, use_std=False)),
)


def example_tree():
  """One prompt, k = 3 tokens (0 = EOS), T = 3: the answer token 2 is rare under ρ (ρ = 0.1 at the
  root); r = 1 for responses 2·EOS, 2·a·EOS; the data are the correct (2, 1, EOS) with mass 0.6
  and the incorrect (1, 2, EOS) with 0.4, so the frontier is not a single point."""
  ref = {(): [0.3, 0.6, 0.1], (1,): [0.5, 0.3, 0.2], (2,): [0.3, 0.4, 0.3],
         (1, 1): [0.4, 0.3, 0.3], (1, 2): [0.4, 0.3, 0.3], (2, 1): [0.4, 0.3, 0.3],
         (2, 2): [0.4, 0.3, 0.3]}
  reward = lambda y: float(y[0] == 2 and y[-1] == 0)
  tree, _ = build_tree([PromptTree(3, 0, 3, ref, {(2, 1, 0): 0.6, (1, 2, 0): 0.4}, reward)], [1.0], 1.0)
  return tree


@functools.partial(jax.jit, static_argnames=("name", "cfg", "steps"))
def train_exact(tree, name: str, cfg, steps: int, lr: float):
  """θ after ``steps`` exact-field ascent steps θ ← θ + lr · field(θ) from θ₀ = log ρ."""
  field = DEMO_TREE_RECIPES[name].field

  def step(_, theta):
    return tuple(t + lr * g for t, g in zip(theta, field(tree, theta, cfg)))
  return jax.lax.fori_loop(0, steps, step, initial_logits(tree))


def hint_outcomes(tree=None, settings=DEFAULT_SETTINGS, steps: int = 150, lr: float = 0.5):
  """SFT loss, reward and decoupling regret (on the leaf set) after training each setting.

  Returns:
    list of dicts {recipe, parameter, value, sft_loss, reward, regret}.
  """
  tree = example_tree() if tree is None else tree
  inst = leaf_instance(tree)
  out = []
  for name, param, values, make in settings:
    for v in values:
      theta = train_exact(tree, name, make(v), steps, lr)
      lp = leaf_policy(tree, policy_log_probs(tree, theta))
      out.append({"recipe": name, "parameter": param, "value": v,
                  "sft_loss": float(obj.sft_loss(inst, lp)), "reward": float(obj.reward(inst, lp)),
                  "regret": float(decoupling_regret(inst, lp))})
  return out


def hints_against_frontier(tree=None, outcomes=None) -> Figure:
  """End points of UFT / Prefix-RFT / BREAD runs on the (SFT loss, reward) plane with the exact
  frontier of the leaf set (this project's D4)."""
  tree = example_tree() if tree is None else tree
  outcomes = hint_outcomes(tree) if outcomes is None else outcomes
  inst = leaf_instance(tree)
  loss, rew = frontier_curve(inst, jnp.concatenate([jnp.zeros(1), jnp.logspace(-3, 6, 90)]))
  fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
  ax.plot(np.asarray(loss), np.asarray(rew), color="#333333", lw=1.6,
          label="exact frontier (ours, D4)")
  styles = {"uft": ("#1f77b4", "o"), "prefix_rft": ("#d62728", "s"), "bread": ("#2ca02c", "^")}
  for name, (color, marker) in styles.items():
    rows = [o for o in outcomes if o["recipe"] == name]
    if not rows:
      continue
    ax.plot([o["sft_loss"] for o in rows], [o["reward"] for o in rows], color=color,
            marker=marker, lw=0.8, ls=":", label=name)
    for o in rows:
      ax.annotate(f"{o['parameter']}={o['value']:g}", (o["sft_loss"], o["reward"]), fontsize=7,
                  xytext=(4, 2), textcoords="offset points", color=color)
  ax.set_xlabel("SFT loss L (nats)")
  ax.set_ylabel("reward J")
  ax.set_title("Hint and prefix recipes on a token tree vs the exact frontier")
  ax.legend(fontsize=8, loc="lower right")
  return fig


FIGURES = {"tree_hints_frontier": hints_against_frontier}

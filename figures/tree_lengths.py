"""G5 (this project's): response lengths along the exact group-RL flow under each length normaliser.

On a tree with a verifiable answer (reward 1 when the token before EOS is the answer), each
normaliser of verl's ``agg_loss`` is run as discrete ascent with its exact expected field (groups
of G enumerated; :mod:`nondecoupling.theory.tree.recipes.group_rl`), from θ₀ = log ρ with a small
step. The panels show the expected length of correct and of incorrect responses (prompt-weighted
E_π[|y| | correct], E_π[|y| | incorrect]) and the decoupling regret of the leaf policy
(:func:`nondecoupling.theory.frontier.decoupling_regret` on the leaf set, D4) along the flow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ..theory.frontier import decoupling_regret
from ..theory.tree.atomic import leaf_instance, leaf_policy
from ..theory.tree.build import PromptTree, build_tree
from ..theory.tree.groups import LOSS_AGG_MODES, leaf_rewards
from ..theory.tree.policy import (
  flat_slots,
  initial_logits,
  leaf_lengths,
  leaf_mask,
  policy_log_probs,
)
from ..theory.tree.recipes.group_rl import GroupRLConfig, fill_levels, group_rl_field
from ..theory.tree.rewards import final_answer_reward

__all__ = ["FIGURES", "answer_tree", "length_statistics", "length_flow", "lengths_along_flow"]


def answer_tree(seed: int = 0, beta: float = 0.5):
  """Two prompts over <eos>, a, b, c with T = 4; correct iff the token before EOS is the answer.

  Every node has all four children, with seeded random reference rows; the SFT data is one long
  correct response per prompt (so the frontier regret has something to trade).
  """
  rng = np.random.default_rng(seed)
  prompts = []
  for answer, demo in ((2, (1, 3, 2, 0)), (3, (2, 1, 3, 0))):
    rows, frontier = {}, [()]
    while frontier:
      s = frontier.pop()
      rows[s] = rng.dirichlet(np.full(4, 2.0))
      frontier += [s + (a,) for a in (1, 2, 3) if len(s) + 1 < 4]
    prompts.append(PromptTree(4, 0, 4, rows, {demo: 1.0}, final_answer_reward(answer, 0)))
  tree, _ = build_tree(prompts, [0.5, 0.5], beta)
  return tree


def length_statistics(tree, log_pi, threshold: float = 0.5):
  """(E_w E_π[|y| | r > thr], E_w E_π[|y| | r ≤ thr]): expected lengths of correct/incorrect."""
  p = jnp.exp(leaf_policy(tree, log_pi))
  mask = leaf_mask(tree)
  length = flat_slots(leaf_lengths(tree))
  good = mask & (leaf_rewards(tree) > threshold)
  bad = mask & ~good

  def cond(sel):
    mass = jnp.sum(jnp.where(sel, p, 0.0), axis=-1)
    mean = jnp.sum(jnp.where(sel, p * length, 0.0), axis=-1) / jnp.where(mass > 0, mass, 1.0)
    return jnp.sum(tree.prompt_weights * mean)

  return cond(good), cond(bad)


@functools.partial(jax.jit, static_argnums=(1, 3))
def length_flow(tree, cfg, lr, steps: int):
  """Discrete ascent θ ← θ + lr·field from log ρ; per step (correct length, incorrect length)
  and the final logits."""
  def step(theta, _):
    stats = length_statistics(tree, policy_log_probs(tree, theta))
    g = group_rl_field(tree, theta, cfg)
    return tuple(a + lr * b for a, b in zip(theta, g)), stats

  theta, (good, bad) = jax.lax.scan(step, initial_logits(tree), None, length=steps)
  return good, bad, theta


def lengths_along_flow(tree=None, modes=LOSS_AGG_MODES, group_size: int = 4,
                       use_std: bool = True, lr: float = 2.0, steps: int = 300):
  """Expected length of correct and incorrect responses, and frontier regret, per normaliser.

  Args:
    tree: a tree with a verifiable-answer reward (default :func:`answer_tree`).
    modes: verl ``loss_agg_mode`` names to compare.
    group_size, use_std: the group and its advantage (no KL, on-policy).
    lr, steps: the ascent step and the number of steps.

  Returns:
    matplotlib Figure.
  """
  tree = answer_tree() if tree is None else tree
  inst = leaf_instance(tree)
  fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
  for mode in modes:
    cfg = fill_levels(tree, GroupRLConfig(group_size=group_size, use_std=use_std,
                                          loss_agg_mode=mode, kl_coef=0.0, kl_form="none"))
    good, bad, theta = length_flow(tree, cfg, lr, steps)
    regret = float(decoupling_regret(inst, leaf_policy(tree, policy_log_probs(tree, theta))))
    axes[0].plot(np.asarray(good), label=mode)
    axes[1].plot(np.asarray(bad), label=mode)
    axes[2].bar(mode.replace("seq-mean-", "seq-mean-\n"), regret)
  axes[0].set(title="E|y| of correct responses", xlabel="step", ylabel="tokens")
  axes[1].set(title="E|y| of incorrect responses", xlabel="step", ylabel="tokens")
  axes[2].set(title=f"decoupling regret after {steps} steps (D4, nats)")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"G5 length normalisers, exact group field (G = {group_size}, "
               f"{'std' if use_std else 'no std'}; this project's)")
  return fig


FIGURES = {"tree_lengths": lengths_along_flow}

"""Shared pieces of the token-level verdicts (theory/statements/tokens.py): picking the worst entry,
sizes of per-level arrays, sequence-level objectives for autodiff references, and scales.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import objectives as atomic
from .._numerics import safe_log
from ..tree import kl, objectives as tree_obj
from ..tree.atomic import leaf_instance, leaf_policy
from ..tree.instance import TreeInstance
from ..tree.policy import (
  Levels,
  policy_log_probs,
)
from ..tree.rounding import gradient_scale, level_sum, tree_slack
from ..verdict import Verdict, identity

__all__ = ["is_depth_one"]


def _real(tree: TreeInstance) -> jax.Array:
  return tree.prompt_weights > 0


def _scale(lhs, rhs):
  """max(1, |lhs|, |rhs|): identity() divides the absolute slack by it."""
  return jnp.maximum(1.0, jnp.maximum(jnp.abs(lhs), jnp.abs(rhs)))


def _finite_abs(a):
  return jnp.where(jnp.isfinite(a), jnp.abs(jnp.where(jnp.isfinite(a), a, 0.0)), 0.0)


def _worst(tree: TreeInstance, lhs, rhs, valid, scale, applies=True) -> Verdict:
  """identity(lhs, rhs) at the entry (among ``valid``) nearest to failing: max residual − slack.

  ``scale`` is S of each entry (broadcast to ``valid``); the entry's slack is γ_N (S + |lhs| +
  |rhs|), relative to max(1, |lhs|, |rhs|) as :func:`~.verdict.identity` reports it.
  """
  size = _scale(lhs, rhs)
  abs_slack = tree_slack(tree, scale + _finite_abs(lhs) + _finite_abs(rhs))
  resid = jnp.where(lhs == rhs, 0.0, jnp.abs(lhs - rhs)) / size
  excess = jnp.where(valid, resid - abs_slack / size, -jnp.inf)
  i = jnp.argmax(excess.reshape(-1))
  pick = lambda a: jnp.broadcast_to(a, valid.shape).reshape(-1)[i]
  return identity(pick(lhs), pick(rhs), pick(abs_slack), applies)


def _max_abs(levels: Levels, tree: TreeInstance) -> jax.Array:
  real = _real(tree)[..., None, None]
  return jnp.max(jnp.stack([jnp.max(jnp.where(real, jnp.abs(a), 0.0)) for a in levels]))


def _gradients(closed: Levels, auto: Levels, tree: TreeInstance, scale, applies=True) -> Verdict:
  """closed form = autodiff: margin −max|closed − auto| / max(1, max|auto|) (as B5)."""
  diff = tuple(a - b for a, b in zip(closed, auto))
  size_auto = _max_abs(auto, tree)
  norm = jnp.maximum(1.0, size_auto)
  return Verdict(_max_abs(closed, tree), size_auto, -_max_abs(diff, tree) / norm,
                 jnp.asarray(applies), jnp.full((), jnp.nan), tree_slack(tree, scale) / norm)


def _zero(tree: TreeInstance, value, scale, norm=None, extra=0.0, applies=True) -> Verdict:
  """value = 0 for a size (≥ 0): margin −value / norm, norm = max(1, value) by default."""
  norm = jnp.maximum(1.0, value) if norm is None else norm
  return Verdict(value, jnp.zeros_like(value), -value / norm, jnp.asarray(applies),
                 jnp.full((), jnp.nan), tree_slack(tree, scale, extra) / norm)


def is_depth_one(tree: TreeInstance) -> jax.Array:
  """[] bool: no real prompt has a response longer than one token (the atomic case).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> bool(is_depth_one(tree))  # (1, 0) and (1, 1) have two tokens
    False
  """
  real = _real(tree)
  deep = [jnp.any(lv.leaf.any((-2, -1)) & real) for lv in tree.levels[1:]]
  return ~jnp.any(jnp.stack(deep)) if deep else jnp.asarray(True)


def _log_policy_scale(tree: TreeInstance, theta: Levels, log_pi: Levels) -> jax.Array:
  """[X] LP: Σ_t max (|θ| + |log π|), the path error scale of leaf log-probabilities."""
  return level_sum(tree, theta) + level_sum(tree, log_pi)


def _reward_over_beta(tree: TreeInstance) -> jax.Array:
  """[X] RB = Σ_t max |r| / β over leaf slots."""
  return level_sum(tree, tuple(jnp.where(lv.leaf, lv.reward, 0.0) / tree.beta
                               for lv in tree.levels))


def _sequence_kl(tree: TreeInstance, theta: Levels) -> jax.Array:
  """E_w KL(π‖ρ) at the sequence level (atomic engine on the leaf set)."""
  inst = leaf_instance(tree)
  log_pi = leaf_policy(tree, policy_log_probs(tree, theta))
  return atomic.expect(inst, atomic.kl_rows(log_pi, safe_log(inst.reference)))


def _sequence_reward(tree: TreeInstance, theta: Levels) -> jax.Array:
  inst = leaf_instance(tree)
  return atomic.reward(inst, leaf_policy(tree, policy_log_probs(tree, theta)))


def _kl_scale(tree: TreeInstance, theta: Levels) -> jax.Array:
  return gradient_scale(tree, policy_log_probs(tree, theta))


def _surrogate_grad(tree: TreeInstance, theta: Levels, estimator: str) -> Levels:
  return jax.grad(lambda t: tree_obj.expect(tree, kl.stop_gradient_surrogate(tree, t,
                                                                              estimator)))(theta)

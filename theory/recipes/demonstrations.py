r"""Demonstration terms: off-policy samples y* ∼ d entering a recipe's field.

A demonstration enters as Σ_{y*} u(y*) (e_{y*} − π) (:func:`demo_apply`), with a per-response weight
u = d · (advantage) · (shaping), and in a mixed group beside on-policy samples (LUFFY, SRFT).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .groups import (
  enumerated_advantage,
  enumerated_off_advantage,
  resolve_levels,
  sample_group_advantage,
  value,
)

__all__ = ["demo_apply", "shaping_weight", "mixed_group_advantages", "mixed_group_sample"]


def demo_apply(pi: jax.Array, u: jax.Array) -> jax.Array:
  """Σ_y u(y) (e_y − π) = u − (Σ u) π per row."""
  return u - jnp.sum(u, axis=-1, keepdims=True) * pi


def shaping_weight(pi, gamma):
  """φ(y) = f′(π(y)) π(y): γ π/(π + γ)² for f = π/(π + γ); π for no reshape (f = π)."""
  if gamma is None:
    return pi
  return gamma * pi / (pi + gamma) ** 2


def mixed_group_advantages(inst, pi_old, n_on, use_std, eps, levels):
  """(ā_on [X, Y], ā_off [X, Y]): mean advantages of an on-policy y and a demo y* in the mixed
  group of n_on on-policy samples and one demonstration y* ~ d."""
  n = n_on + 1
  if use_std:
    m = resolve_levels(inst, levels)
    a_pos, a_neg = enumerated_advantage(inst, pi_old, n_on - 1, m, True, eps, 0.0,
                                         demo_in_group=True)
    a_on = a_pos - a_neg
    a_off = enumerated_off_advantage(inst, pi_old, n_on, m, True, eps)
  else:
    v = value(pi_old, inst.reward)
    e_d = value(inst.data, inst.reward)
    a_on = inst.reward - (inst.reward + (n_on - 1) * v + e_d) / n
    a_off = inst.reward - (inst.reward + n_on * v) / n
  return a_on, a_off


def mixed_group_sample(p, p_old, r, idx, demo, use_std, eps):
  """Advantages of the on-policy samples [n_on] and of the demo [] in one sampled mixed group."""
  rewards = jnp.concatenate([r[idx], r[demo][None]])
  adv = sample_group_advantage(rewards, use_std, eps)
  return adv[:-1], adv[-1]

r"""Demonstration terms: off-policy samples y* ∼ d entering a recipe's field.

A demonstration enters as Σ_{y*} u(y*) (e_{y*} − π) (:func:`demo_apply`), with a per-response weight
u = d · (advantage) · (shaping), and in a mixed group beside on-policy samples (LUFFY, SRFT): n_on
draws from π_old and one y* ∼ d share the group statistics (mean, and std if used).

References: fusion-methods.md Rule 2 (mixed groups), §4 (LUFFY), §5 (SRFT).
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

__all__ = ["demo_apply", "shaping_weight", "mixed_on_advantage", "mixed_off_advantage",
           "mixed_off_advantage_parts", "mixed_group_sample"]


def demo_apply(pi: jax.Array, u: jax.Array) -> jax.Array:
  r"""Σ_y u(y) (e_y − π) = u − (Σ_y u) π per row (the field of per-response weights u).

  Examples:
    >>> import jax.numpy as jnp
    >>> demo_apply(jnp.array([[0.5, 0.5]]), jnp.array([[1.0, 0.0]])).tolist()  # SFT on y* = 0
    [[0.5, -0.5]]
  """
  return u - jnp.sum(u, axis=-1, keepdims=True) * pi


def shaping_weight(pi: jax.Array, gamma: float | None) -> jax.Array:
  r"""φ(y) = f′(π(y)) π(y): the weight on (e_y − π) of the gradient of f(π(y)).

  f(π) = π/(π + γ) (LUFFY's policy shaping) gives φ = γ π/(π + γ)²; ``gamma=None`` is no reshape
  (f = π, behaviour probability 1) and gives φ = π.

  Examples:
    >>> import jax.numpy as jnp
    >>> shaping_weight(jnp.array([0.1, 0.5]), 0.1).tolist()
    [0.25, 0.1388888888888889]
    >>> shaping_weight(jnp.array([0.1, 0.5]), None).tolist()
    [0.1, 0.5]
  """
  if gamma is None:
    return pi
  return gamma * pi / (pi + gamma) ** 2


def mixed_on_advantage(inst, pi_old, n_on: int, use_std: bool, eps: float,
                       levels: int | None) -> jax.Array:
  r"""[X, Y] E[Â | y] of an on-policy y in the mixed group (n_on draws from π_old, one y* ∼ d).

  Without std: r(y) − (r(y) + (n_on − 1) V_old + E_d r)/(n_on + 1); with std, by enumeration.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> mixed_on_advantage(inst, jnp.array([[0.5, 0.5]]), 1, False, 1e-6, None).tolist()
    [[-0.5, 0.0]]
  """
  if use_std:
    m = resolve_levels(inst, levels)
    pos, neg = enumerated_advantage(inst, pi_old, n_on - 1, m, True, eps, 0.0, demo_in_group=True)
    return pos - neg
  v = value(pi_old, inst.reward)
  e_d = value(inst.data, inst.reward)
  return inst.reward - (inst.reward + (n_on - 1) * v + e_d) / (n_on + 1)


def mixed_off_advantage(inst, pi_old, n_on: int, use_std: bool, eps: float,
                        levels: int | None, on_support: bool = False) -> jax.Array:
  r"""[X, Y] E[Â_off | y*] of the demonstration y* in the mixed group.

  Without std: r(y*) − (r(y*) + n_on V_old)/(n_on + 1); with std, by enumeration
  (:func:`mixed_off_advantage_parts`; ``on_support`` as there).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> mixed_off_advantage(inst, jnp.array([[0.5, 0.5]]), 1, False, 1e-6, None).tolist()
    [[-0.25, 0.25]]
  """
  if use_std:
    pos, neg = mixed_off_advantage_parts(inst, pi_old, n_on, use_std, eps, levels, on_support)
    return pos - neg
  return inst.reward - (inst.reward + n_on * value(pi_old, inst.reward)) / (n_on + 1)


def mixed_off_advantage_parts(inst, pi_old, n_on: int, use_std: bool, eps: float,
                              levels: int | None, on_support: bool = False):
  r"""(E[Â_off⁺ | y*], E[Â_off⁻ | y*]), each [X, Y], by enumeration (what a clip mask needs).

  ``on_support``: every real response has reference > 0 (static; see
  :func:`~.groups.enumerated_off_advantage`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> pos, neg = mixed_off_advantage_parts(inst, jnp.array([[0.5, 0.5]]), 1, False, 1e-6, None)
    >>> pos.tolist(), neg.tolist()
    ([[0.0, 0.25]], [[0.25, 0.0]])
  """
  m = resolve_levels(inst, levels)
  return enumerated_off_advantage(inst, pi_old, n_on, m, use_std, eps, on_support)


def mixed_group_sample(r: jax.Array, idx: jax.Array, demo: jax.Array, use_std: bool,
                       eps: float):
  """Advantages of the on-policy samples [n_on] and of the demo [] in one sampled mixed group.

  Args:
    r: [Y] rewards of the prompt; idx: [n_on] on-policy draws; demo: [] the demonstration.

  Examples:
    >>> import jax.numpy as jnp
    >>> on, off = mixed_group_sample(jnp.array([0.0, 1.0]), jnp.array([0]), jnp.array(1),
    ...                              False, 1e-6)
    >>> on.tolist(), float(off)
    ([-0.5], 0.5)
  """
  rewards = jnp.concatenate([r[idx], r[demo][None]])
  adv = sample_group_advantage(rewards, use_std, eps)
  return adv[:-1], adv[-1]

r"""Numerical helpers shared by every module of theory/ (one copy each).

Conventions: ``0 · log 0 = 0`` and ``0 · anything = 0``; masked reductions ignore masked entries;
gradients stay NaN-free at the masked points (double ``where``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["NEG_INF", "check_rank", "safe_log", "plogq", "masked_dot", "masked_max", "masked_min",
           "expm1_minus_x"]

NEG_INF = -jnp.inf


def check_rank(name: str, x: jax.Array, rank: int) -> None:
  """Raises ValueError unless ``x`` has the given rank (functions here are unbatched)."""
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must have rank {rank} (unbatched; use jax.vmap), got {jnp.ndim(x)}")


def safe_log(p: jax.Array) -> jax.Array:
  r"""log p with log 0 = −∞ and no NaN gradient at 0.

  >>> import jax.numpy as jnp
  >>> safe_log(jnp.array([1.0, 0.0])).tolist()
  [0.0, -inf]
  """
  pos = p > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, p, 1.0)), NEG_INF)


def plogq(p: jax.Array, log_q: jax.Array) -> jax.Array:
  r"""Elementwise p · log q with 0 · log 0 = 0 (and 0 · anything = 0).

  >>> import jax.numpy as jnp
  >>> plogq(jnp.array([0.0, 0.5]), jnp.array([-jnp.inf, 0.0])).tolist()
  [0.0, 0.0]
  """
  pos = p > 0
  return jnp.where(pos, p * jnp.where(pos, log_q, 0.0), 0.0)


def masked_dot(p: jax.Array, f: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  r"""Σ_y p(y) f(y) along ``axis`` with 0 · anything = 0 (an expectation under p).

  >>> import jax.numpy as jnp
  >>> float(masked_dot(jnp.array([0.5, 0.5, 0.0]), jnp.array([1.0, 3.0, jnp.inf])))
  2.0
  """
  pos = p > 0
  return jnp.sum(jnp.where(pos, p * jnp.where(pos, f, 0.0), 0.0), axis=axis, keepdims=keepdims)


def masked_max(x: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """max of ``x`` over the entries where ``mask`` is True (−∞ if none).

  >>> import jax.numpy as jnp
  >>> float(masked_max(jnp.array([3.0, 1.0]), jnp.array([False, True])))
  1.0
  """
  return jnp.max(jnp.where(mask, x, NEG_INF), axis=axis)


def masked_min(x: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """min of ``x`` over the entries where ``mask`` is True (+∞ if none).

  >>> import jax.numpy as jnp
  >>> float(masked_min(jnp.array([3.0, 1.0]), jnp.array([True, False])))
  3.0
  """
  return jnp.min(jnp.where(mask, x, jnp.inf), axis=axis)


def expm1_minus_x(x: jax.Array) -> jax.Array:
  r"""e^x − 1 − x without cancellation (a series for |x| < 0.1), ≥ 0 for every x.

  >>> import jax.numpy as jnp
  >>> f"{float(expm1_minus_x(jnp.asarray(1e-9))):.6e}"  # x²/2
  '5.000000e-19'
  """
  small = jnp.abs(x) < 0.1
  xs = jnp.where(small, x, 0.0)
  series = 1.0
  for k in range(12, 2, -1):
    series = 1.0 + xs / k * series
  return jnp.where(small, 0.5 * xs * xs * series, jnp.expm1(jnp.where(small, 0.0, x)) - x)

r"""Numerical helpers shared by every module of theory/ (one copy each).

Conventions: ``0 · log 0 = 0`` and ``0 · anything = 0``; masked reductions ignore masked entries;
gradients stay NaN-free at the masked points (double ``where``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["NEG_INF", "check_rank", "safe_log", "plogq", "masked_dot", "masked_max",
           "masked_min", "expm1_minus_x", "centre", "kl_from_log_ratio", "unit_roundoff", "gamma"]

NEG_INF = -jnp.inf
# log-probabilities below this count as probability 0 in KL terms (see objectives.kl_rows): e^−700
# ≈ 1e−304 keeps p, and p times any weight ≥ 1e−4, out of the subnormal range.
LOG_NEGLIGIBLE = -700.0


def check_rank(name: str, x: jax.Array, rank: int) -> None:
  """Raises ValueError unless ``x`` has the given rank (functions here are unbatched)."""
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must have rank {rank} (unbatched; use jax.vmap), got {jnp.ndim(x)}")


def safe_log(p: jax.Array) -> jax.Array:
  r"""log p with log 0 = −∞ and no NaN gradient at 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> safe_log(jnp.array([1.0, 0.0])).tolist()
    [0.0, -inf]
  """
  pos = p > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, p, 1.0)), NEG_INF)


def plogq(p: jax.Array, log_q: jax.Array) -> jax.Array:
  r"""Elementwise p · log q with 0 · log 0 = 0 (and 0 · anything = 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> plogq(jnp.array([0.0, 0.5]), jnp.array([-jnp.inf, 0.0])).tolist()
    [0.0, 0.0]
  """
  pos = p > 0
  return jnp.where(pos, p * jnp.where(pos, log_q, 0.0), 0.0)


def masked_dot(p: jax.Array, f: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
  r"""Σ_y p(y) f(y) along ``axis`` with 0 · anything = 0 (an expectation under p).

  Examples:
    >>> import jax.numpy as jnp
    >>> float(masked_dot(jnp.array([0.5, 0.5, 0.0]), jnp.array([1.0, 3.0, jnp.inf])))
    2.0
  """
  pos = p > 0
  return jnp.sum(jnp.where(pos, p * jnp.where(pos, f, 0.0), 0.0), axis=axis, keepdims=keepdims)


def masked_max(x: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """max of ``x`` over the entries where ``mask`` is True (−∞ if none).

  Examples:
    >>> import jax.numpy as jnp
    >>> float(masked_max(jnp.array([3.0, 1.0]), jnp.array([False, True])))
    1.0
  """
  return jnp.max(jnp.where(mask, x, NEG_INF), axis=axis)


def masked_min(x: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """min of ``x`` over the entries where ``mask`` is True (+∞ if none).

  Examples:
    >>> import jax.numpy as jnp
    >>> float(masked_min(jnp.array([3.0, 1.0]), jnp.array([True, False])))
    3.0
  """
  return jnp.min(jnp.where(mask, x, jnp.inf), axis=axis)


def expm1_minus_x(x: jax.Array) -> jax.Array:
  r"""e^x − 1 − x without cancellation (a series for |x| < 0.1), ≥ 0 for every x.

  Examples:
    >>> import jax.numpy as jnp
    >>> f"{float(expm1_minus_x(jnp.asarray(1e-9))):.6e}"  # x²/2
    '5.000000e-19'
  """
  small = jnp.abs(x) < 0.1
  xs = jnp.where(small, x, 0.0)
  series = 1.0
  for k in range(12, 2, -1):  # Horner; products with 1/k (one rounding each) instead of divisions
    series = 1.0 + xs * (1.0 / k) * series
  return jnp.where(small, 0.5 * xs * xs * series, jnp.expm1(jnp.where(small, 0.0, x)) - x)


def centre(p: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  r"""E_p[x] and x − E_p[x] along the last axis, by two passes (the second removes the first's
  rounding), so that E_p of the centred values is zero to second order in the unit roundoff.

  Entries where p = 0 are ignored and their centred value is 0.

  Args:
    p: [..., Y] weights (a distribution per row).
    x: [..., Y] values.

  Returns:
    (mean [...], centred [..., Y]).

  Examples:
    >>> import jax.numpy as jnp
    >>> mean, c = centre(jnp.array([0.5, 0.5, 0.0]), jnp.array([0.3, 0.30000001, 9.0]))
    >>> f"{float(mean):.10f}", [f"{v:.3e}" for v in c.tolist()]
    ('0.3000000050', ['-5.000e-09', '5.000e-09', '0.000e+00'])
  """
  pos = p > 0
  m1 = masked_dot(p, x, keepdims=True)
  y = jnp.where(pos, x - m1, 0.0)
  m2 = jnp.sum(p * y, axis=-1, keepdims=True)
  return jnp.squeeze(m1 + m2, -1), jnp.where(pos, y - m2, 0.0)


def kl_from_log_ratio(p: jax.Array, log_ratio: jax.Array, q_outside: jax.Array) -> jax.Array:
  r"""KL(p‖q) = Σ_{p>0} p φ(log(q/p)) + q(outside supp p), φ(v) = e^v − 1 − v ≥ 0, per row.

  Every term is non-negative, so the KL keeps full relative precision when p ≈ q (it equals
  Σ p log(p/q) when both rows sum to 1).

  Args:
    p: [..., Y] the first distribution.
    log_ratio: [..., Y] log(q/p) on supp p (ignored elsewhere).
    q_outside: [..., Y] q where p = 0 (ignored where p > 0).

  Returns:
    [...] KL(p‖q) (+∞ where q = 0 somewhere on supp p).

  Examples:
    >>> import jax.numpy as jnp
    >>> f"{float(kl_from_log_ratio(jnp.array([0.5, 0.5]), jnp.array([1e-9, -1e-9]), jnp.zeros(2))):.4e}"
    '5.0000e-19'
  """
  pos = p > 0
  inside = jnp.where(pos, p * expm1_minus_x(jnp.where(pos, log_ratio, 0.0)), 0.0)
  return jnp.sum(inside + jnp.where(pos, 0.0, q_outside), axis=-1)


def unit_roundoff(dtype) -> float:
  """u = ε/2 of a float dtype (2⁻⁵³ for float64)."""
  return float(jnp.finfo(dtype).eps) / 2.0


def gamma(n: int, dtype) -> float:
  r"""γ_n = n u / (1 − n u): |fl(Σ_{i≤n+1} a_i) − Σ a_i| ≤ γ_n Σ |a_i| (Higham, Lemma 3.1)."""
  nu = n * unit_roundoff(dtype)
  return nu / (1.0 - nu) if nu < 0.5 else float("inf")

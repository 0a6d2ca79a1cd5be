r"""The exponential tilt π ∝ p e^{r/β} of a distribution p, in forms that do not cancel.

The Gibbs tilt π*_β of ρ is the heart of every statement, and the quantities built on it are
small differences of large terms in two regimes:

- near ties and large β (r/β nearly constant on supp p): log Z and E_p r/β agree to many digits;
  the cumulant gap K = log E_p e^{c} (c = (r − E_p r)/β centred in two passes) is computed as
  log(1 + E_p[e^c − 1 − c]), a sum of non-negative terms (full relative precision), and
  log(π/p) = c − K − δ is then small and exact;
- domination (small β, π ≈ one-hot on the best response y*): log π(y*) ≈ 0 is a difference of
  numbers of size max c; it is computed as −log(1 + Σ_{y≠y*} e^{a_y − a_{y*}}), a = log p + c,
  whose every exponent is ≤ 0.

Both forms are kept, and each consumer takes, entry by entry, the one whose rounding-error
estimate is smaller (:func:`log_ratio_to`, :func:`tilt_tv_rows`, :func:`tilt_c1_rows`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._numerics import NEG_INF, centre, expm1_minus_x, safe_log

__all__ = ["LOG_HUGE", "Tilt", "tilt", "cumulant_gap", "log_tilt", "log_ratio_to", "tilt_c1_rows",
           "tilt_tv_rows"]

LOG_HUGE = 700.0  # e^x for x ≤ LOG_HUGE is finite in float64 (e^709.78 overflows)


class Tilt(NamedTuple):
  r"""The tilt π ∝ p e^{r/β} of a distribution p (rows along the last axis).

  Attributes:
    mean: [...] E_p r.
    centred: [..., Y] c = (r − E_p r)/β on supp p (0 elsewhere).
    gap: [...] K = log E_p e^{c} − E_p c = log E_p e^{r/β} − E_p r/β ≥ 0 (the cumulant gap, a
      Jensen gap).
    shift: [...] δ = E_p c as computed (a rounding residue, ≈ 0): log E_p e^{r/β} = mean/β + K + δ.
    log_ratio: [..., Y] log(π/p) on supp p (−∞ elsewhere): c − K − δ, except at the dominant
      entry when log π(y*) − log p(y*) is the more precise form there.
    is_top: [..., Y] bool, the dominant entry y* = argmax π (one per row).
    log_top: [...] log π(y*) = −log1p(Σ_{y≠y*} e^{a_y − a_{y*}}), a = log p + c.
    err_ratio: [..., Y] the error scale of ``log_ratio`` (its absolute error is ≲ u × this).
  """

  mean: jax.Array
  centred: jax.Array
  gap: jax.Array
  shift: jax.Array
  log_ratio: jax.Array
  is_top: jax.Array
  log_top: jax.Array
  err_ratio: jax.Array


def cumulant_gap(p, c, pos, delta=None, top=None):
  """(K, δ) of centred c under p: log1p form, or max-shifted where e^{max c} would overflow.

  K = log E_p e^{c} − E_p c (the cumulant gap, :func:`tilt`) and δ = E_p c as computed; δ and
  max c over supp p may be given when the caller has them (a loop over scalings of one c).

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([0.5, 0.5])
    >>> gap, _ = cumulant_gap(p, jnp.array([-5e-9, 5e-9]), p > 0)
    >>> f"{float(gap):.6e}"  # log cosh(5e-9)
    '1.250000e-17'
  """
  if delta is None:
    delta = jnp.sum(p * c, axis=-1)
  if top is None:
    top = jnp.max(jnp.where(pos, c, -jnp.inf), axis=-1)
  series = top <= LOG_HUGE
  c_s = jnp.where(series[..., None] & pos, c, 0.0)
  a = jnp.sum(jnp.where(pos, p * expm1_minus_x(c_s), 0.0), axis=-1)
  k_series = jnp.log1p(a) - delta * (a / (1.0 + a))
  # Arguments made inert in the branch not taken, so that gradients stay finite.
  top_l = jnp.where(series, 0.0, top)
  c_l = jnp.where(pos & ~series[..., None], c - top_l[..., None], 0.0)
  mass = jnp.sum(jnp.where(pos, p * jnp.exp(c_l), 0.0), axis=-1)
  k_lse = top_l + jnp.log(jnp.where(series, 1.0, mass)) - delta
  return jnp.maximum(jnp.where(series, k_series, k_lse), 0.0), delta


def tilt(p: jax.Array, r: jax.Array, beta: jax.Array) -> Tilt:
  r"""The tilt π = p e^{r/β} / E_p e^{r/β} along the last axis, without cancellation.

  With c = (r − E_p r)/β (centred in two passes, :func:`~._numerics.centre`) and δ = E_p c (≈ 0,
  a rounding residue), the cumulant gap is

  .. math:: K = \log E_p e^{c} - E_p c = \log(1 + A) - \delta\,\frac{A}{1 + A} + O(\delta^2),
            \quad A = E_p[e^{c} - 1 - c] \ge 0

  (a sum of non-negative terms, :func:`~._numerics.expm1_minus_x`), so K keeps full relative
  precision however small it is (near ties: K ≈ ½ Var_p(r)/β²). Only when e^{max c} would
  overflow (max c > ``LOG_HUGE``) is it K = M + log E_p e^{c − M} − δ with M = max c, where
  K ≥ M + log p(argmax) is large. Then log(π/p) = c − K − δ, and at the dominant entry y*
  also log π(y*) = −log1p(Σ_{y≠y*} e^{a_y − a_{y*}}) (module docstring).

  Args:
    p: [..., Y] distribution(s) (zeros allowed).
    r: [..., Y] reward.
    beta: [] or [...] β > 0.

  Returns:
    :class:`Tilt`.

  Examples:
    >>> import jax.numpy as jnp
    >>> t = tilt(jnp.array([0.5, 0.5]), jnp.array([0.3, 0.30000001]), jnp.asarray(1.0))
    >>> f"{float(t.gap):.6e}"  # log cosh(5e-9)
    '1.250000e-17'
    >>> g = tilt(jnp.array([0.25, 0.75]), jnp.array([1.0, -1.0]), jnp.asarray(0.02))
    >>> f"{float(-g.log_top):.6e}"  # −log π(y*) = log(1 + 3 e^{−100})
    '1.116023e-43'
  """
  pos = p > 0
  mean, dev = centre(p, r)
  beta = jnp.asarray(beta)
  c = jnp.where(pos, dev / (beta[..., None] if beta.ndim else beta), 0.0)
  gap, delta = cumulant_gap(p, c, pos)
  log_p = safe_log(p)
  centred_ratio = jnp.where(pos, c - (gap + delta)[..., None], NEG_INF)
  # Dominant entry: a = log p + c, log π(y*) = −log1p(Σ_{y≠y*} e^{a_y − a_y*}).
  a = jnp.where(pos, log_p + c, NEG_INF)
  index = jnp.arange(p.shape[-1]).reshape((1,) * (p.ndim - 1) + (p.shape[-1],))
  is_top = (index == jnp.argmax(a, axis=-1)[..., None]) & pos
  a_top = jnp.max(a, axis=-1, keepdims=True)
  rest = jnp.sum(jnp.where(pos & ~is_top, jnp.exp(jnp.where(pos, a - a_top, 0.0)), 0.0), axis=-1)
  log_top = -jnp.log1p(rest)
  abs_lp = jnp.where(pos, jnp.abs(jnp.where(pos, log_p, 0.0)), 0.0)
  err_centred = jnp.where(pos, jnp.abs(c) + (gap + jnp.abs(delta))[..., None], 0.0)
  # log π(y*)'s own error: Σ_{y≠y*} π_y (|a_y| + |a_y*|) ≤ (1 − π(y*)) (|a_y*| + max|a|).
  abs_a = jnp.where(pos, abs_lp + jnp.abs(c), 0.0)
  err_top = -jnp.expm1(log_top) * (jnp.sum(jnp.where(is_top, abs_a, 0.0), axis=-1)
                                   + jnp.max(abs_a, axis=-1))
  err_alt = abs_lp + (jnp.abs(log_top) + err_top)[..., None]
  use_alt = is_top & (err_alt < err_centred)
  log_ratio = jnp.where(use_alt, log_top[..., None] - jnp.where(pos, log_p, 0.0), centred_ratio)
  return Tilt(mean, c, gap, delta, log_ratio, is_top, log_top,
              jnp.where(use_alt, err_alt, err_centred))


def log_tilt(p: jax.Array, t: Tilt) -> jax.Array:
  """[..., Y] log π: log π(y*) at the dominant entry, log p + log(π/p) elsewhere (−∞ off supp p).

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([0.5, 0.5])
    >>> pi = jnp.exp(log_tilt(p, tilt(p, jnp.array([0.0, 1.0]), 1.0)))
    >>> [round(v, 6) for v in pi.tolist()]  # (1, e)/(1 + e)
    [0.268941, 0.731059]
  """
  pos = p > 0
  return jnp.where(t.is_top, t.log_top[..., None],
                   jnp.where(pos, safe_log(p) + jnp.where(pos, t.log_ratio, 0.0), NEG_INF))


def log_ratio_to(p: jax.Array, t: Tilt, log_q: jax.Array) -> jax.Array:
  r"""[..., Y] log(π/q) for another distribution q, in the more precise of two forms per entry.

  (log p − log q) + log(π/p) — exact when q = p or q ≈ p — or, at the dominant entry,
  log π(y*) − log q(y*) (exact when π and q are both concentrated there). −∞ where p = 0 < q.

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([0.5, 0.5])
    >>> t = tilt(p, jnp.array([0.0, 1.0]), 1.0)
    >>> # log(π/p) = log(2/(1 + e)), log(2e/(1 + e))
    >>> log_ratio_to(p, t, jnp.log(p)).round(6).tolist()
    [-0.620115, 0.379885]
  """
  pos = p > 0
  log_p = safe_log(p)
  qpos = jnp.isfinite(log_q)
  lq = jnp.where(qpos, log_q, 0.0)
  same = lq == jnp.where(pos, log_p, 0.0)
  via_p = jnp.where(same, 0.0, jnp.where(pos, log_p, 0.0) - lq) + jnp.where(pos, t.log_ratio, 0.0)
  err_p = jnp.where(same, 0.0, jnp.abs(jnp.where(pos, log_p, 0.0)) + jnp.abs(lq)) + t.err_ratio
  err_top = jnp.abs(t.log_top)[..., None] + jnp.abs(lq)
  out = jnp.where(t.is_top & (err_top < err_p), t.log_top[..., None] - lq, via_p)
  return jnp.where(pos, out, NEG_INF)


def tilt_c1_rows(p: jax.Array, t: Tilt, d: jax.Array, r: jax.Array, beta) -> jax.Array:
  r"""[...] log E_p e^{r/β} − E_d r/β, in the more precise of its two exact forms per row.

  K − Σ_y (d − p) r/β (near ties, p ≈ d: nothing cancels) or Σ_y d log(p/π) (domination:
  log π(y*) is exact there); the form with the smaller rounding-error estimate is returned.

  Examples:
    >>> import jax.numpy as jnp
    >>> p, r = jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0])
    >>> round(float(tilt_c1_rows(p, tilt(p, r, 1.0), p, r, 1.0)), 6)  # log((1 + e)/2) − ½
    0.120115
  """
  both = (d > 0) | (p > 0)
  gain = jnp.sum(jnp.where(both, (d - p) * r, 0.0), axis=-1)
  beta = jnp.asarray(beta)
  form_k = t.gap - gain / beta
  err_k = t.gap + jnp.sum(jnp.where(both, jnp.abs((d - p) * r), 0.0), axis=-1) / beta
  support = d > 0
  ratio = jnp.where(support, t.log_ratio, 0.0)
  form_d = -jnp.sum(jnp.where(support, d * ratio, 0.0), axis=-1)
  err_d = jnp.sum(jnp.where(support, d * (jnp.abs(ratio) + t.err_ratio), 0.0), axis=-1)
  return jnp.where(err_d < err_k, form_d, form_k)


def tilt_tv_rows(p: jax.Array, t: Tilt, q: jax.Array) -> jax.Array:
  r"""[...] TV(q, π) = ½ Σ_y |q − π| with q − π = (q − p) − p (e^{log(π/p)} − 1), or at the
  dominant entry (q − 1) + (1 − π(y*)) = (q − 1) − expm1(log π(y*)) when that is more precise.

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([0.5, 0.5])
    >>> round(float(tilt_tv_rows(p, tilt(p, jnp.array([0.0, 1.0]), 1.0), p)), 6)  # e/(1 + e) − ½
    0.231059
  """
  pos = p > 0
  u = jnp.where(pos, t.log_ratio, 0.0)
  em = jnp.expm1(u)
  via_p = (q - p) - jnp.where(pos, p * em, 0.0)
  err_p = jnp.abs(q - p) + jnp.where(pos, p * jnp.abs(em) * (1.0 + t.err_ratio), 0.0)
  rest = -jnp.expm1(t.log_top)[..., None]
  via_top = (q - 1.0) + rest
  err_top = jnp.abs(q - 1.0) + rest * (1.0 + jnp.abs(t.log_top)[..., None])
  diff = jnp.where(t.is_top & (err_top < err_p), via_top, via_p)
  return 0.5 * jnp.sum(jnp.abs(diff), axis=-1)

r"""Rounding scales of the shared computed objects, from which every statement builds its slack.

For an object computed in :mod:`.objectives` (log-probabilities, the Gibbs tilt, KL divergences,
C₁) this gives a magnitude S ≥ 0 such that its absolute rounding error is at most γ_N S, in the
model of :mod:`.verdict` (whose docstring states it). Statements add these scales up with the
magnitudes of their own terms and call :func:`~.verdict.rounding_slack`.

The Gibbs tilt (:func:`~.tilt.tilt`): with c = (r − E_p r)/β and K = log E_p e^{c}, a
perturbation of c_y by θ_y changes K by Σ_y (π − p)_y θ_y, so relative errors u in c give
u Σ_y |π − p|_y |c_y|; the log1p form adds K itself, the first-order correction for the centring
residue δ leaves ≤ δ² ≤ (γ (E_p|c| + γ E_p|r|/β))², and the max-shifted form (max c > ``LOG_HUGE``) adds max c.
log(π/p) = c − K − δ then has error scale |c_y| + S_K + E_p|c|, and log π*_β = log ρ + log(π*/ρ)
adds |log ρ|. At the dominant entry y*, log π(y*) = −log1p(Σ_{y≠y*} e^{a_y − a_y*}) has error
scale |log π(y*)| + (1 − π(y*))(|a_y*| + max|a|), a = log p + c.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._numerics import expm1_minus_x, gamma, unit_roundoff
from .instance import Instance
from .objectives import gibbs, safe_log
from .tilt import LOG_HUGE, Tilt, log_ratio_to, log_tilt

__all__ = ["entries", "abs_log", "TiltScale", "tilt_scale", "gibbs_scale", "kl_scale",
           "kl_to_gibbs_scale", "cross_entropy_scale", "c1_scale"]


def entries(inst: Instance) -> int:
  """|X| |Y| of an (unbatched) instance: the number of terms its sums run over (static).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> entries(make_instance([0.5, 0.5], [[1.0, 0.0, 0.0]] * 2, [[0.0, 1.0, 2.0]] * 2, 1.0))
    6
  """
  n_x, n_y = inst.data.shape[-2:]
  return int(n_x) * int(n_y)


def abs_log(log_p: jax.Array) -> jax.Array:
  """|log p| where finite, 0 elsewhere (the error scale of a log-probability computed as log p).

  Examples:
    >>> import jax.numpy as jnp
    >>> abs_log(jnp.array([-2.0, -jnp.inf])).tolist()
    [2.0, 0.0]
  """
  return jnp.where(jnp.isfinite(log_p), jnp.abs(jnp.where(jnp.isfinite(log_p), log_p, 0.0)), 0.0)


class TiltScale(NamedTuple):
  """Error scales of a tilt π ∝ p e^{r/β} (module docstring).

  Attributes:
    pi: [..., Y] the tilted distribution π (0 off supp p).
    log_ratio: [..., Y] error scale of log(π/p) (0 off supp p).
    gap: [...] error scale of K.
    log_pi: [..., Y] error scale of log π (:func:`~.tilt.log_tilt`).
    top: [...] error scale of log π(y*) at the dominant entry.
  """

  pi: jax.Array
  log_ratio: jax.Array
  gap: jax.Array
  log_pi: jax.Array
  top: jax.Array


def tilt_scale(p: jax.Array, r: jax.Array, beta: jax.Array, t: Tilt) -> TiltScale:
  """The error scales of the :class:`~.tilt.Tilt` ``t`` of ``p`` by r/β (module docstring).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tilt import tilt
    >>> p, r = jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0])
    >>> s = tilt_scale(p, r, jnp.asarray(1.0), tilt(p, r, 1.0))
    >>> round(float(s.gap), 6)  # K + Σ|π − p||c| = 0.1201145 + 2 · 0.2310586 · ½
    0.351173
  """
  pos = p > 0
  log_pi = log_tilt(p, t)
  pi = jnp.where(pos, jnp.exp(log_pi), 0.0)
  abs_c = jnp.abs(t.centred)
  mean_abs = jnp.sum(p * abs_c, axis=-1)
  top = jnp.max(jnp.where(pos, t.centred, -jnp.inf), axis=-1)
  shifted = top > LOG_HUGE
  # The centring residue δ is at most γ_Y (E_p|c| + γ_Y E_p|r|/β) (the second pass removes the
  # first's rounding up to that); the first-order correction leaves δ²: S ∋ γ_Y (…)².
  g_row = gamma(p.shape[-1] + 4, p.dtype)
  residue = g_row * (mean_abs + g_row * jnp.sum(p * jnp.abs(r), axis=-1) / beta) ** 2
  gap = (t.gap + jnp.sum(jnp.abs(pi - p) * abs_c, axis=-1) + residue
         + jnp.where(shifted, jnp.abs(top) + t.gap, 0.0))
  ratio = jnp.where(pos, t.err_ratio + (gap + mean_abs)[..., None], 0.0)
  abs_a = jnp.where(pos, abs_log(safe_log(p)) + abs_c, 0.0)
  err_top = -jnp.expm1(t.log_top) * (jnp.sum(jnp.where(t.is_top, abs_a, 0.0), axis=-1)
                                     + jnp.max(abs_a, axis=-1)) + jnp.abs(t.log_top)
  log_pi_scale = jnp.where(t.is_top, err_top[..., None],
                           jnp.where(pos, abs_log(safe_log(p)) + ratio, 0.0))
  return TiltScale(pi, ratio, gap, log_pi_scale, err_top)


def gibbs_scale(inst: Instance, t: Tilt | None = None) -> TiltScale:
  """Error scales of the Gibbs tilt π*_β of ρ (:func:`~.objectives.gibbs`, ``gibbs_tilt``).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> s = gibbs_scale(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> [round(v, 6) for v in s.pi[0].tolist()], round(float(s.gap[0]), 6)  # π*_β, and S_K as above
    ([0.268941, 0.731059], 0.351173)
  """
  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  return tilt_scale(inst.reference, r, inst.beta, gibbs(inst) if t is None else t)


def kl_scale(log_p: jax.Array, log_q: jax.Array, p_scale: jax.Array,
             q_scale: jax.Array) -> jax.Array:
  r"""[X] error scale of :func:`~.objectives.kl_rows` (log p, log q of error scales given).

  Σ_{p>0} [p φ(v) + p (|e^v − 1| + u E) E] + Σ_{p=0} q (1 + S_q), v = log(q/p), E = S_p + S_q:
  the value, the conditioning of φ (φ'(v) = e^v − 1; the u E term covers a v rounded to 0, where
  φ(δv) ≈ δv²/2) and the relative error of q = e^{log q} off supp p.

  Examples:
    >>> import jax.numpy as jnp
    >>> log_p = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> # identical exact inputs
    >>> kl_scale(log_p, log_p, jnp.zeros((1, 2)), jnp.zeros((1, 2))).tolist()
    [0.0]
    >>> log_q = jnp.log(jnp.array([[0.25, 0.75]]))
    >>> # = KL(p‖q) here
    >>> round(float(kl_scale(log_p, log_q, jnp.zeros((1, 2)), jnp.zeros((1, 2)))[0]), 6)
    0.143841
  """
  p = jnp.exp(log_p)
  pos = p > 0
  v = jnp.where(pos, log_q, 0.0) - jnp.where(pos, log_p, 0.0)
  finite = pos & jnp.isfinite(v)
  v = jnp.where(finite, v, 0.0)
  err = p_scale + q_scale
  u = unit_roundoff(p.dtype)
  inside = jnp.where(finite, p * expm1_minus_x(v) + p * (jnp.abs(jnp.expm1(v)) + u * err) * err,
                     0.0)
  q_out = jnp.exp(jnp.where(pos, -jnp.inf, log_q))
  return jnp.sum(inside + jnp.where(pos, 0.0, q_out * (1.0 + q_scale)), axis=-1)


def kl_to_gibbs_scale(inst: Instance, log_p: jax.Array, ts: TiltScale | None = None,
                      t: Tilt | None = None) -> jax.Array:
  r"""[X] error scale of :func:`~.objectives.kl_to_gibbs` (log p an exact input).

  As :func:`kl_scale`, with log(π*/p) of the error scale of the form
  :func:`~.tilt.log_ratio_to` takes: |log ρ| + |log p| (0 where log p = log ρ: identical inputs
  have identical logs) + S_u, or |log p| + S_top at the dominant entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.objectives import kl_to_gibbs
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> log_p = jnp.log(inst.data)
    >>> # Σ p φ(v) = the KL itself
    >>> bool(kl_to_gibbs_scale(inst, log_p)[0] >= kl_to_gibbs(inst, log_p)[0])
    True
  """
  t = gibbs(inst) if t is None else t
  ts = gibbs_scale(inst, t) if ts is None else ts
  rho = inst.reference
  p = jnp.exp(log_p)
  pos = (p > 0) & (rho > 0)
  log_rho = safe_log(rho)
  lp = jnp.where(pos, log_p, 0.0)
  same = lp == jnp.where(pos, log_rho, 0.0)
  err_p = jnp.where(same, 0.0, abs_log(log_rho) + abs_log(log_p)) + ts.log_ratio
  err_top = ts.top[:, None] + abs_log(log_p)
  v_scale = jnp.where(pos, jnp.where(t.is_top & (err_top < err_p), err_top, err_p), 0.0)
  v = jnp.where(pos, log_ratio_to(rho, t, log_p), 0.0)
  u = unit_roundoff(p.dtype)
  inside = jnp.where(pos, p * expm1_minus_x(v) + p * (jnp.abs(jnp.expm1(v)) + u * v_scale) * v_scale,
                     0.0)
  outside = jnp.where((p > 0) | (rho <= 0), 0.0, ts.pi * (1.0 + ts.log_pi))
  return jnp.sum(inside + outside, axis=-1)


def cross_entropy_scale(p: jax.Array, log_q: jax.Array, q_scale: jax.Array) -> jax.Array:
  """[X] error scale of −Σ p log q: Σ_{p>0} p (|log q| + S_q).

  Examples:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([[0.5, 0.5]])
    >>> # Σ p |log q| = log 2
    >>> cross_entropy_scale(p, jnp.log(p), jnp.zeros((1, 2))).round(6).tolist()
    [0.693147]
  """
  pos = p > 0
  return jnp.sum(jnp.where(pos, p * (abs_log(log_q) + q_scale), 0.0), axis=-1)


def c1_scale(inst: Instance, ts: TiltScale | None = None) -> jax.Array:
  """[X] error scale of :func:`~.objectives.c1_rows`: S_K + Σ_y |d − ρ| |r| / β.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(c1_scale(inst)[0]), 6)  # S_K only: ρ = d, so Σ|d − ρ||r|/β = 0
    0.351173
  """
  ts = gibbs_scale(inst) if ts is None else ts
  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  return ts.gap + jnp.sum(jnp.abs(inst.data - inst.reference) * jnp.abs(r), axis=-1) / inst.beta

r"""The joint non-decoupling bound (this project's D3; not the paper's).

For every policy π (any reference ρ): √(ΔL(π)/2) + √(ΔJ_β(π)/(2β)) ≥ E_w TV(d_x, π*_x), with
ΔL = L(π) − L(d) = E_w KL(d‖π) (B1) and ΔJ_β = J_β(π*) − J_β(π) = β E_w KL(π‖π*) (B2): Pinsker twice,
the triangle inequality and Jensen. No policy is near-optimal for both objectives unless d is close
to π*.

Both gaps are computed as the KLs B1 and B2 name (non-negative forms, no cancellation), never as
differences of losses or rewards: the square roots would otherwise amplify the cancelled digits
(near ties: a KL of 1e-17 computed as a difference of O(1) terms is pure rounding). TV(d, π*) is
½ Σ |(d − ρ) − ρ (e^{u} − 1)| with u = log(π*/ρ), exact when d and π* are close. Rounding (see
:mod:`..verdict`): each √(x/2) adds min(√(δ/2), δ/(2√(2x))) with δ = γ_N × the KL's scale, and TV
its terms ½ Σ (|d − ρ| + ρ|e^u − 1| (1 + S_u)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import expect, gibbs, kl_rows, kl_to_gibbs, safe_log
from ..rounding import abs_log, entries, gibbs_scale, kl_scale, kl_to_gibbs_scale
from ..tilt import tilt_tv_rows
from ..verdict import Verdict, at_least, gamma_for, rounding_slack, sqrt_error

__all__ = ["joint_gap", "joint_tv_rows", "joint_tv", "joint_bound"]


def joint_gap(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """√(ΔL(π)/2) + √(ΔJ_β(π)/(2β)), with ΔL = E_w KL(d‖π) (B1), ΔJ_β = β E_w KL(π‖π*) (B2).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(joint_gap(inst, jnp.log(inst.data))), 6)  # π = d: √0 + √(KL(d‖π*)/2)
    0.245066
  """
  d_l = expect(inst, kl_rows(safe_log(inst.data), log_pi))
  d_j_over_beta = expect(inst, kl_to_gibbs(inst, log_pi))
  return jnp.sqrt(d_l / 2.0) + jnp.sqrt(d_j_over_beta / 2.0)


def joint_tv_rows(inst: Instance) -> jax.Array:
  """[X] TV(d_x, π*_x) = ½ Σ_y |(d − ρ) − ρ(e^u − 1)|, u = log(π*/ρ) (exact when d ≈ π*; at a
  dominant response (d − 1) + (1 − π*) when that is more precise: :func:`~..tilt.tilt_tv_rows`).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> tie = make_instance([1.0], [[0.5, 0.5]], [[0.3, 0.30000001]], 1.0)
    >>> f"{float(joint_tv_rows(tie)[0]):.6e}"  # ½ tanh(5e-9)
    '2.500000e-09'
  """
  return tilt_tv_rows(inst.reference, gibbs(inst), inst.data)


def joint_tv(inst: Instance) -> jax.Array:
  """E_w TV(d, π*_β).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> round(float(joint_tv(inst)), 6)  # TV(d, π*) = e/(1 + e) − ½
    0.231059
  """
  return expect(inst, joint_tv_rows(inst))


def joint_bound(inst: Instance, log_pi: jax.Array) -> Verdict:
  """D3 (ours): √(ΔL/2) + √(ΔJ_β/(2β)) ≥ E_w TV(d, π*) for every policy π (any ρ).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = joint_bound(inst, jnp.log(inst.data))
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # √(KL/2) ≥ TV (Pinsker)
    (0.245066, 0.231059)
  """
  log_d = safe_log(inst.data)
  t = gibbs(inst)
  ts = gibbs_scale(inst, t)
  d_l = expect(inst, kl_rows(log_d, log_pi))
  d_j = expect(inst, kl_to_gibbs(inst, log_pi, t))
  n = entries(inst)
  g = gamma_for(n, d_l.dtype)
  err_l = g * expect(inst, kl_scale(log_d, log_pi, abs_log(log_d), abs_log(log_pi)))
  err_j = g * expect(inst, kl_to_gibbs_scale(inst, log_pi, ts, t))
  lhs = jnp.sqrt(d_l / 2.0) + jnp.sqrt(d_j / 2.0)
  tv = expect(inst, tilt_tv_rows(inst.reference, t, inst.data))
  pos = inst.reference > 0
  u = jnp.where(pos, t.log_ratio, 0.0)
  tv_scale = expect(inst, 0.5 * jnp.sum(jnp.abs(inst.data - inst.reference) + jnp.where(
      pos, inst.reference * jnp.abs(jnp.expm1(u)) * (1.0 + ts.log_ratio), 0.0), axis=-1))
  slack = rounding_slack(2.0 * lhs + tv_scale, n,
                         extra=sqrt_error(d_l / 2.0, err_l / 2.0) + sqrt_error(d_j / 2.0,
                                                                               err_j / 2.0))
  return at_least(lhs, tv, slack)

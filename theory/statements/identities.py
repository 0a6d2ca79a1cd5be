r"""The exact identities B1–B5 as statements (sides + margin).

They hold for every valid instance and every policy π (or pair π₁ = π*_β(ρ), π₂); verify checks
them to float64 rounding. π is passed as log-probabilities ``log_pi`` [X, Y] (-inf where no mass);
it must put mass only where ρ > 0 for B2/B4 to be finite.

Rounding (see :mod:`..verdict`): the slack of each identity is γ_N times the magnitudes of every
sum on both sides: cross-entropies Σ p(|log q| + S_q), rewards Σ π|r| (×(2 + T) for π*_β, whose
log has error scale T), β × the KL scales of :func:`~..rounding.kl_scale` (plus 2 per KL for the
Σ_y p = 1 its non-negative form uses), and for log Z_β its centred parts |E_ρ r| + Σρ|r| + βS_K.
B5 compares gradients entry by entry: its scale is the largest entry scale
w π_y (H_y + Σ π H)(1 + |θ_y| + max|θ|) with H = |r| + β(1 + |log π| + |log ρ|) (the magnitudes
the autodiff path multiplies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import (
  c1,
  expect,
  gibbs,
  gibbs_tilt,
  kl_rows,
  log_partition,
  policy_log_probs,
  regularized_reward,
  reward,
  rl_grad,
  rl_support,
  safe_log,
  sft_grad,
  sft_loss,
  sft_optimum_loss,
)
from ..rounding import abs_log, c1_scale, cross_entropy_scale, entries, gibbs_scale, kl_scale
from ..verdict import Verdict, gamma_for, identity, rounding_slack

__all__ = ["sft_excess_is_kl", "gibbs_variational", "sft_loss_after_rl", "reward_change_after_rl",
           "reward_change_scale", "gradients_closed_form", "clip_logits"]


def _rewards_scale(inst: Instance, pi: jax.Array, log_scale=0.0) -> jax.Array:
  """[X] error scale of Σ_y π r, π = e^{log π} with log π of error scale ``log_scale``."""
  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  return jnp.sum(pi * jnp.abs(r) * (2.0 + log_scale), axis=-1)


def sft_excess_is_kl(inst: Instance, log_pi: jax.Array) -> Verdict:
  """B1: L(π) − L(d) = E_w KL(d_x || π_x).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = sft_excess_is_kl(inst, jnp.log(jnp.array([[0.25, 0.75]])))
    >>> # L(π) − L(d) = KL(d‖π) = ½ log 2 + ½ log(2/3)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)
    (0.143841, 0.143841)
  """
  log_d = safe_log(inst.data)
  lhs = sft_loss(inst, log_pi) - sft_optimum_loss(inst)
  rhs = expect(inst, kl_rows(log_d, log_pi))
  scale = expect(inst, 2.0 * cross_entropy_scale(inst.data, log_pi, abs_log(log_pi))
                 + 2.0 * cross_entropy_scale(inst.data, log_d, abs_log(log_d))
                 + kl_scale(log_d, log_pi, abs_log(log_d), abs_log(log_pi)) + 2.0)
  return identity(lhs, rhs, rounding_slack(scale, entries(inst)))


def _log_partition_scale(inst: Instance, ts, t) -> jax.Array:
  """[X] error scale of β log Z_β = E_ρ r + β(K + δ)."""
  r = jnp.where(inst.response_mask, inst.reward, 0.0)
  abs_r = jnp.sum(inst.reference * jnp.abs(r), axis=-1)
  return jnp.abs(t.mean) + abs_r + inst.beta * (ts.gap + t.gap)


def gibbs_variational(inst: Instance, log_pi: jax.Array) -> Verdict:
  """B2: J_β(π; ρ) = β E_w log Z_β − β E_w KL(π_x || π*_x).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = gibbs_variational(inst, jnp.log(inst.data))
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # J_β(ρ) = J(ρ) = ½
    (0.5, 0.5)
  """
  t = gibbs(inst)
  log_star, log_rho = gibbs_tilt(inst, t), safe_log(inst.reference)
  rhs = inst.beta * expect(inst, log_partition(inst, t)) - inst.beta * expect(
      inst, kl_rows(log_pi, log_star))
  ts = gibbs_scale(inst, t)
  pi = jnp.exp(log_pi)
  scale = expect(inst, _rewards_scale(inst, pi) + _log_partition_scale(inst, ts, t) + inst.beta * (
      kl_scale(log_pi, log_rho, abs_log(log_pi), abs_log(log_rho))
      + kl_scale(log_pi, log_star, abs_log(log_pi), ts.log_pi) + 4.0))
  return identity(regularized_reward(inst, log_pi), rhs, rounding_slack(scale, entries(inst)))


def sft_loss_after_rl(inst: Instance) -> Verdict:
  """B3: L(π*_β) − L(ρ) = C₁(β; ρ), for any reference ρ.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = sft_loss_after_rl(inst)
    >>> round(float(v.lhs), 6) == round(float(v.rhs), 6)  # L(π*_β) − L(ρ) = C₁(β; ρ)
    True
  """
  t = gibbs(inst)
  log_star, log_rho = gibbs_tilt(inst, t), safe_log(inst.reference)
  ts = gibbs_scale(inst, t)
  scale = expect(inst, cross_entropy_scale(inst.data, log_star, ts.log_pi)
                 + 2.0 * cross_entropy_scale(inst.data, log_rho, abs_log(log_rho))
                 + c1_scale(inst, ts))
  return identity(sft_loss(inst, log_star) - sft_loss(inst, log_rho), c1(inst, t),
                  rounding_slack(scale, entries(inst)))


def reward_change_scale(inst: Instance, log_pi2: jax.Array, t=None) -> jax.Array:
  """[] error scale of both sides of B4 (also C4's criterion, with π₂ = d); ``t`` = gibbs(inst).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> float(reward_change_scale(inst, jnp.log(inst.data))) > 0  # a positive error scale
    True
  """
  t = gibbs(inst) if t is None else t
  log_pi1, log_rho = gibbs_tilt(inst, t), safe_log(inst.reference)
  ts = gibbs_scale(inst, t)
  s2 = abs_log(log_pi2)
  return expect(inst, _rewards_scale(inst, jnp.exp(log_pi2)) + _rewards_scale(inst, ts.pi,
                                                                           ts.log_pi)
                + inst.beta * (kl_scale(log_pi2, log_pi1, s2, ts.log_pi)
                               + kl_scale(log_pi2, log_rho, s2, abs_log(log_rho))
                               + kl_scale(log_pi1, log_rho, ts.log_pi, abs_log(log_rho)) + 6.0))


def reward_change_after_rl(inst: Instance, log_pi2: jax.Array) -> Verdict:
  """B4: J(π₂) − J(π₁) = −β E KL(π₂||π₁) + β (E KL(π₂||ρ) − E KL(π₁||ρ)), π₁ = π*_β(ρ).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = reward_change_after_rl(inst, jnp.log(inst.data))
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # J(d) − J(π*_β(ρ)) both ways
    (0.024633, 0.024633)
  """
  t = gibbs(inst)
  log_pi1, log_rho = gibbs_tilt(inst, t), safe_log(inst.reference)
  rhs = inst.beta * (-expect(inst, kl_rows(log_pi2, log_pi1))
                     + expect(inst, kl_rows(log_pi2, log_rho))
                     - expect(inst, kl_rows(log_pi1, log_rho)))
  return identity(reward(inst, log_pi2) - reward(inst, log_pi1), rhs,
                  rounding_slack(reward_change_scale(inst, log_pi2, t), entries(inst)))


def clip_logits(log_pi: jax.Array, floor: float = -30.0) -> jax.Array:
  """Finite logits for a policy given as log-probabilities (-inf entries raised to ``floor``).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> clip_logits(jnp.log(jnp.array([[1.0, 0.0]]))).tolist()  # log 0 = −inf raised to the floor
    [[0.0, -30.0]]
  """
  return jnp.maximum(log_pi, floor)


def gradients_closed_form(inst: Instance, theta: jax.Array) -> Verdict:
  """B5: the closed-form logit gradients of L and J_β equal jax.grad of the objectives.

  ∇_{θ_x} L = w_x (π_x − d_x);  ∇_{θ_x} J_β = w_x F_x (r_x − β log(π_x/ρ_x)).
  lhs = max |closed form|, rhs = max |autodiff|; margin = −max residual / max(1, max |autodiff|).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = gradients_closed_form(inst, jnp.zeros((1, 2)))
    >>> float(v.margin) >= -float(v.slack)  # closed form = jax.grad
    True
  """
  auto_l = jax.grad(lambda t: sft_loss(inst, policy_log_probs(inst, t)))(theta)
  auto_j = jax.grad(lambda t: regularized_reward(inst, policy_log_probs(inst, t)))(theta)
  closed_l, closed_j = sft_grad(inst, theta), rl_grad(inst, theta)
  resid = jnp.maximum(jnp.max(jnp.abs(closed_l - auto_l)), jnp.max(jnp.abs(closed_j - auto_j)))
  size_auto = jnp.maximum(jnp.max(jnp.abs(auto_l)), jnp.max(jnp.abs(auto_j)))
  size_closed = jnp.maximum(jnp.max(jnp.abs(closed_l)), jnp.max(jnp.abs(closed_j)))
  # Entry scales (module docstring): π's relative error is u(1 + |θ_y| + max|θ|).
  support = rl_support(inst)
  log_pi = policy_log_probs(inst, theta)
  pi = jnp.exp(log_pi)
  th = jnp.where(support, jnp.abs(theta), 0.0)
  cond = 1.0 + th + jnp.max(th, axis=-1, keepdims=True)
  r = jnp.where(support, jnp.abs(inst.reward), 0.0)
  h = jnp.where(support, r + inst.beta * (1.0 + abs_log(log_pi)
                                          + abs_log(safe_log(inst.reference))), 0.0)
  w = inst.prompt_weights[:, None]
  scale_l = w * (pi * cond + inst.data)
  scale_j = w * pi * cond * (h + jnp.sum(pi * h, axis=-1, keepdims=True))
  scale = jnp.max(jnp.where(support, jnp.maximum(scale_l, scale_j), 0.0))
  norm = jnp.maximum(1.0, size_auto)
  slack = (gamma_for(entries(inst), scale.dtype) * scale) / norm
  return Verdict(size_closed, size_auto, -resid / norm, jnp.asarray(True), jnp.full((), jnp.nan),
                 slack)

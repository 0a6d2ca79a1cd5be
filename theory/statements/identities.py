r"""The exact identities B1–B5 as statements (sides + margin).

They hold for every valid instance and every policy π (or pair π₁ = π*_β(ρ), π₂); verify checks
them to float64 rounding. π is passed as log-probabilities ``log_pi`` [X, Y] (-inf where no mass);
it must put mass only where ρ > 0 for B2/B4 to be finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import (
  c1,
  expect,
  gibbs_tilt,
  kl_rows,
  log_partition,
  policy_log_probs,
  regularized_reward,
  reward,
  rl_grad,
  safe_log,
  sft_grad,
  sft_loss,
  sft_optimum_loss,
)
from ..verdict import Verdict, identity

__all__ = ["sft_excess_is_kl", "gibbs_variational", "sft_loss_after_rl", "reward_change_after_rl",
           "gradients_closed_form", "clip_logits"]


def sft_excess_is_kl(inst: Instance, log_pi: jax.Array) -> Verdict:
  """B1: L(π) − L(d) = E_w KL(d_x || π_x)."""
  return identity(sft_loss(inst, log_pi) - sft_optimum_loss(inst),
                  expect(inst, kl_rows(safe_log(inst.data), log_pi)))


def gibbs_variational(inst: Instance, log_pi: jax.Array) -> Verdict:
  """B2: J_β(π; ρ) = β E_w log Z_β − β E_w KL(π_x || π*_x)."""
  rhs = inst.beta * expect(inst, log_partition(inst)) - inst.beta * expect(
      inst, kl_rows(log_pi, gibbs_tilt(inst)))
  return identity(regularized_reward(inst, log_pi), rhs)


def sft_loss_after_rl(inst: Instance) -> Verdict:
  """B3: L(π*_β) − L(ρ) = C₁(β; ρ), for any reference ρ."""
  return identity(sft_loss(inst, gibbs_tilt(inst)) - sft_loss(inst, safe_log(inst.reference)),
                  c1(inst))


def reward_change_after_rl(inst: Instance, log_pi2: jax.Array) -> Verdict:
  """B4: J(π₂) − J(π₁) = −β E KL(π₂||π₁) + β (E KL(π₂||ρ) − E KL(π₁||ρ)), π₁ = π*_β(ρ)."""
  log_pi1, log_rho = gibbs_tilt(inst), safe_log(inst.reference)
  rhs = inst.beta * (-expect(inst, kl_rows(log_pi2, log_pi1))
                     + expect(inst, kl_rows(log_pi2, log_rho))
                     - expect(inst, kl_rows(log_pi1, log_rho)))
  return identity(reward(inst, log_pi2) - reward(inst, log_pi1), rhs)


def clip_logits(log_pi: jax.Array, floor: float = -30.0) -> jax.Array:
  """Finite logits for a policy given as log-probabilities (-inf entries raised to ``floor``)."""
  return jnp.maximum(log_pi, floor)


def gradients_closed_form(inst: Instance, theta: jax.Array) -> Verdict:
  """B5: the closed-form logit gradients of L and J_β equal jax.grad of the objectives.

  ∇_{θ_x} L = w_x (π_x − d_x);  ∇_{θ_x} J_β = w_x F_x (r_x − β log(π_x/ρ_x)).
  lhs = max |closed form|, rhs = max |autodiff|; margin = −max residual / max(1, max |autodiff|).
  """
  auto_l = jax.grad(lambda t: sft_loss(inst, policy_log_probs(inst, t)))(theta)
  auto_j = jax.grad(lambda t: regularized_reward(inst, policy_log_probs(inst, t)))(theta)
  closed_l, closed_j = sft_grad(inst, theta), rl_grad(inst, theta)
  resid = jnp.maximum(jnp.max(jnp.abs(closed_l - auto_l)), jnp.max(jnp.abs(closed_j - auto_j)))
  size_auto = jnp.maximum(jnp.max(jnp.abs(auto_l)), jnp.max(jnp.abs(auto_j)))
  size_closed = jnp.maximum(jnp.max(jnp.abs(closed_l)), jnp.max(jnp.abs(closed_j)))
  return Verdict(size_closed, size_auto, -resid / jnp.maximum(1.0, size_auto), jnp.asarray(True),
                 jnp.full((), jnp.nan))

r"""This project's own results D1-D3 (THEORY.md part D). They are not the paper's.

- D1: the non-decoupling threshold for exact RL: when does RL from ρ *lower* the SFT loss, and the
  critical β_c at which C₁(β_c; ρ) = 0.
- D2: the threshold for infinitesimal RL: the slope and curvature of L along the RL logit flow at
  t = 0 (closed forms, checked against automatic differentiation here and against finite
  differences of the integrated flow in the dynamics checks).
- D3: the joint non-decoupling bound √(ΔL/2) + √(ΔJ_β/(2β)) ≥ E_w TV(d, π*).

Key fact used by D1 (ours): g(β) = β C₁(β; ρ) = β E_w log E_ρ e^{r/β} − E_w E_d r is
non-increasing in β with g'(β) = −E_w KL(π*_β || ρ), falling from E_w max_{supp ρ} r − E_w E_d r
(β → 0) to E_w E_ρ r − E_w E_d r (β → ∞). So a critical β_c exists iff E_w E_d r > E_w E_ρ r
(and d is not concentrated on the maximisers), it is unique, and exact RL lowers the SFT loss
exactly for β > β_c.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from theory.instance import Instance
from theory.objectives import (
    c1, expect, fisher_matvec, gibbs_tilt, log_partition, policy_log_probs, regularized_reward,
    rl_grad, rl_support, safe_log, sft_excess, sft_loss, tv_rows,
)
from theory.paper import sft_then_rl
from theory.verdict import Verdict, at_least, identity, positive

__all__ = [
    "scaled_c1", "beta_critical", "critical_beta_root", "critical_beta_sign",
    "rl_lowers_sft_needs_reward_gain", "rl_slope_at_start", "rl_curvature_at_sft_optimum",
    "rl_slope_autodiff", "rl_curvature_autodiff", "initial_slope", "initial_curvature",
    "joint_gap", "joint_tv", "joint_bound",
]

LOG_BETA_BRACKET = (-25.0, 25.0)  # β_c is searched in [e^-25, e^25] (about 1e-11 to 7e10)
BISECTION_STEPS = 64               # 50 / 2^64 in log β: far below float64 resolution


def _expected(inst: Instance, p: jax.Array, f: jax.Array) -> jax.Array:
  return expect(inst, jnp.sum(jnp.where(p > 0, p * f, 0.0), axis=-1))


def _soft_max_reward(inst: Instance, beta: jax.Array) -> jax.Array:
  """[X] β log E_ρ e^{r/β}, accurate for every β.

  Written as E_ρ r + β log E_ρ e^{s}, s = (r − E_ρ r)/β: for large β (|s| < 1) through
  log1p(E_ρ expm1(s)), which keeps full relative precision where β log Z would cancel.
  """
  rho = inst.reference
  mean = jnp.sum(jnp.where(rho > 0, rho * inst.reward, 0.0), axis=-1)
  s = jnp.where(rho > 0, (inst.reward - mean[:, None]) / beta, 0.0)
  small = jnp.max(jnp.abs(s), axis=-1) < 1.0
  via_log1p = jnp.log1p(jnp.sum(jnp.where(rho > 0, rho * jnp.expm1(jnp.clip(s, -1.0, 1.0)), 0.0),
                                axis=-1))
  via_lse = jax.nn.logsumexp(safe_log(rho) + s, axis=-1)
  return mean + beta * jnp.where(small, via_log1p, via_lse)


def scaled_c1(inst: Instance, log_beta: jax.Array) -> jax.Array:
  """g(β) = β C₁(β; ρ) = E_w[β log E_ρ e^{r/β} − E_d r] at β = exp(log_beta), non-increasing."""
  beta = jnp.exp(log_beta)
  return expect(inst, _soft_max_reward(inst, beta)
                - jnp.sum(jnp.where(inst.data > 0, inst.data * inst.reward, 0.0), axis=-1))


def beta_critical(inst: Instance) -> jax.Array:
  r"""D1 (ours): the critical β_c with C₁(β_c; ρ) = 0, or NaN when there is none.

  Bisection on log β over ``LOG_BETA_BRACKET`` (g = βC₁ is monotone, so the root is unique);
  fixed step count, so it jit-compiles once per shape and vmaps over instances.

  Args:
    inst: instance (its own β is ignored).

  Returns:
    [] β_c, NaN if C₁(β; ρ) does not change sign on the bracket.
  """
  lo, hi = (jnp.asarray(v, inst.reward.dtype) for v in LOG_BETA_BRACKET)
  g_lo, g_hi = scaled_c1(inst, lo), scaled_c1(inst, hi)
  exists = (g_lo > 0) & (g_hi < 0)

  def step(_, bracket):
    a, b = bracket
    mid = 0.5 * (a + b)
    pos = scaled_c1(inst, mid) > 0
    return jnp.where(pos, mid, a), jnp.where(pos, b, mid)

  a, b = jax.lax.fori_loop(0, BISECTION_STEPS, step, (lo, hi))
  return jnp.where(exists, jnp.exp(0.5 * (a + b)), jnp.nan)


def critical_beta_root(inst: Instance) -> Verdict:
  """D1 (ours): at β_c, β_c C₁(β_c; ρ) = 0 (applies when β_c exists)."""
  bc = beta_critical(inst)
  exists = jnp.isfinite(bc)
  g = scaled_c1(inst, jnp.log(jnp.where(exists, bc, 1.0)))
  # Scale: the terms of g are of the size of the rewards.
  scale = jnp.maximum(1.0, jnp.max(jnp.abs(inst.reward)))
  return Verdict(g, jnp.zeros(()), -jnp.abs(g) / scale, exists, jnp.full((), jnp.nan))


def critical_beta_sign(inst: Instance) -> Verdict:
  """D1 (ours): exact RL lowers the SFT loss (C₁ < 0) iff β > β_c.

  margin = (log β_c − log β) · βC₁(β) ≥ 0 at the instance's β (applies when β_c exists).
  """
  bc = beta_critical(inst)
  exists = jnp.isfinite(bc)
  value = (jnp.log(jnp.where(exists, bc, 1.0)) - jnp.log(inst.beta)) * inst.beta * c1(inst)
  return at_least(value, jnp.zeros(()), applies=exists)._replace(ratio=jnp.full((), jnp.nan))


def rl_lowers_sft_needs_reward_gain(inst: Instance) -> Verdict:
  """D1 (ours), necessary condition: C₁(β; ρ) < 0 ⇒ E_w E_d r > E_w E_ρ r (strict)."""
  gain = (_expected(inst, inst.data, inst.reward) - _expected(inst, inst.reference, inst.reward))
  # C₁ < 0 beyond rounding (C₁ is a difference of terms of size |r|/β).
  scale = jnp.maximum(1.0, jnp.max(jnp.abs(inst.reward)) / inst.beta)
  return positive(gain, applies=c1(inst) < -1e-12 * scale)


# --- D2 --------------------------------------------------------------------------------------


def initial_slope(inst: Instance) -> jax.Array:
  r"""D2 (ours): dL/dt at t = 0 along θ̇ = ∇J_β from θ = log ρ.

  .. math:: \sum_x w_x^2 \sum_y (\rho - d)(y|x)\, \rho(y|x)\, (r(x,y) - E_{\rho_x} r)
  """
  rho, d, r, w = inst.reference, inst.data, inst.reward, inst.prompt_weights
  centred = r - jnp.sum(jnp.where(rho > 0, rho * r, 0.0), axis=-1, keepdims=True)
  per = jnp.sum(jnp.where(rho > 0, (rho - d) * rho * centred, 0.0), axis=-1)
  return jnp.sum(jnp.where(w > 0, w ** 2 * per, 0.0))


def initial_curvature(inst: Instance) -> jax.Array:
  r"""D2 (ours): d²L/dt² at t = 0 along the RL flow from the SFT optimum (ρ = d).

  .. math:: g^\top H_L g,\quad g = \nabla J_\beta(\log d),\ H_L = \mathrm{blockdiag}(w_x F_x)
  """
  sr = sft_then_rl(inst)
  theta0 = jnp.where(rl_support(sr), safe_log(sr.data), 0.0)
  g = rl_grad(sr, theta0)
  return jnp.sum(sr.prompt_weights * jnp.sum(g * fisher_matvec(sr.data, g), axis=-1))


def _start_logits(inst: Instance) -> jax.Array:
  return jnp.where(rl_support(inst), safe_log(inst.reference), 0.0)


def _auto_field(inst: Instance):
  return jax.grad(lambda t: regularized_reward(inst, policy_log_probs(inst, t)))


def _auto_loss(inst: Instance):
  return lambda t: sft_loss(inst, policy_log_probs(inst, t))


def rl_slope_autodiff(inst: Instance) -> jax.Array:
  """dL/dt at t = 0 by automatic differentiation (chain rule ∇L · ∇J_β, both by jax.grad)."""
  theta0 = _start_logits(inst)
  return jax.jvp(_auto_loss(inst), (theta0,), (_auto_field(inst)(theta0),))[1]


def rl_curvature_autodiff(inst: Instance) -> jax.Array:
  """d²L/dt² at t = 0 from ρ = d by automatic differentiation of t ↦ L(θ(t)) (exact 2nd order)."""
  sr = sft_then_rl(inst)
  field, loss = _auto_field(sr), _auto_loss(sr)
  first = lambda t: jax.jvp(loss, (t,), (field(t),))[1]  # dL/dt as a function of θ
  theta0 = _start_logits(sr)
  return jax.jvp(first, (theta0,), (field(theta0),))[1]


def rl_slope_at_start(inst: Instance) -> Verdict:
  """D2 (ours): the closed-form initial slope equals dL/dt by autodiff."""
  return identity(initial_slope(inst), rl_slope_autodiff(inst))


def rl_curvature_at_sft_optimum(inst: Instance) -> Verdict:
  """D2 (ours): at ρ = d the slope is 0 and d²L/dt² = gᵀ H_L g (autodiff) — and it is ≥ 0."""
  return identity(initial_curvature(inst), rl_curvature_autodiff(inst))


# --- D3 --------------------------------------------------------------------------------------


def joint_gap(inst: Instance, log_pi: jax.Array) -> jax.Array:
  """√(ΔL(π)/2) + √(ΔJ_β(π)/(2β)), with ΔL = L(π) − L(d), ΔJ_β = J_β(π*) − J_β(π)."""
  d_l = jnp.maximum(sft_excess(inst, log_pi), 0.0)
  d_j = jnp.maximum(inst.beta * expect(inst, log_partition(inst))
                    - regularized_reward(inst, log_pi), 0.0)
  return jnp.sqrt(d_l / 2.0) + jnp.sqrt(d_j / (2.0 * inst.beta))


def joint_tv(inst: Instance) -> jax.Array:
  """E_w TV(d_x, π*_x)."""
  return expect(inst, tv_rows(inst.data, jnp.exp(gibbs_tilt(inst))))


def joint_bound(inst: Instance, log_pi: jax.Array) -> Verdict:
  """D3 (ours): √(ΔL/2) + √(ΔJ_β/(2β)) ≥ E_w TV(d, π*) for every policy π (any ρ)."""
  return at_least(joint_gap(inst, log_pi), joint_tv(inst))

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
NEWTON_MAX_STEPS = 200             # Newton from the right: a handful in practice


def _expected(inst: Instance, p: jax.Array, f: jax.Array) -> jax.Array:
  return expect(inst, jnp.sum(jnp.where(p > 0, p * f, 0.0), axis=-1))


def _prompt_root_terms(d, rho, r, t):
  """Per-prompt (h_x, h_x') at t = 1/β for h_x(t) = log E_ρ e^{t r} − t E_d r (convex in t).

  With c = r − E_ρ r and s = t c: h_x = log E_ρ e^{s} − t (E_d r − E_ρ r), where
  log E_ρ e^{s} = m + log E_ρ e^{s − m} (m = max(0, max s): no overflow), or log1p(E_ρ expm1(s))
  when every |s| < 1, which keeps full precision for small t (large β).
  h_x' = E_{π_t} r − E_d r with π_t ∝ ρ e^{t r}, the Gibbs tilt at β = 1/t.
  """
  pos = rho > 0
  mean_rho = jnp.sum(jnp.where(pos, rho * r, 0.0))
  gap = jnp.sum(jnp.where(d > 0, d * r, 0.0)) - mean_rho
  c = jnp.where(pos, r - mean_rho, 0.0)
  s = t * c
  m = jnp.maximum(0.0, jnp.max(jnp.where(pos, s, -jnp.inf)))
  ex = jnp.where(pos, jnp.exp(s - m), 0.0)
  total = jnp.sum(rho * ex)
  small = jnp.max(jnp.abs(s)) < 1.0
  via_expm1 = jnp.log1p(jnp.sum(jnp.where(pos, rho * jnp.expm1(jnp.clip(s, -1.0, 1.0)), 0.0)))
  log_z = jnp.where(small, via_expm1, m + jnp.log(total))
  return log_z - t * gap, jnp.sum(rho * ex * c) / total - gap


def scaled_c1(inst: Instance, log_beta: jax.Array) -> jax.Array:
  """g(β) = β C₁(β; ρ) = E_w[β log E_ρ e^{r/β} − E_d r] at β = exp(log_beta), non-increasing.

  Computed as β·h(1/β) with h of ``_prompt_root_terms`` (full precision for large β too).
  """
  xs = (inst.data, inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0))
  beta = jnp.exp(log_beta)
  h_x, _ = jax.vmap(lambda d, rho, r: _prompt_root_terms(d, rho, r, 1.0 / beta))(*xs)
  return beta * expect(inst, h_x)


def critical_beta_from_terms(inst: Instance, map_prompts) -> jax.Array:
  r"""D1 (ours): β_c with C₁(β_c; ρ) = 0, or NaN when there is none, by Newton's method.

  With t = 1/β, C₁ = h(t)/t where h(t) = E_w[log E_ρ e^{t r} − t E_d r] is convex (a cumulant
  generating function minus a line), h(0) = 0 and h'(0) = E_w E_ρ r − E_w E_d r. A positive root
  exists iff E_w E_d r > E_w E_ρ r and d is not concentrated on the maximisers of r; then it is
  unique, C₁ < 0 exactly for β > β_c, and Newton's method started to the right of the root
  converges monotonically to it. The start t_up = −E_w log ρ(M_x) / E_w[max r − E_d r] (M_x the
  maximisers of r on supp ρ_x) satisfies h(t_up) ≥ 0, because log E_ρ e^{t r} ≥ t max r + log ρ(M).

  Args:
    inst: instance (its own β is ignored).
    map_prompts: ``map_prompts(fn)`` applies ``fn(d_x, ρ_x, r_x)`` to every prompt (vmap, or a
      chunked map for large instances) and returns the stacked results.

  Returns:
    [] β_c, NaN if there is no root or it lies outside ``LOG_BETA_BRACKET``.
  """
  w = inst.prompt_weights
  dtype = inst.reward.dtype
  weigh = lambda t: jnp.sum(jnp.where(w > 0, w * jnp.where(w > 0, t, 0.0), 0.0))

  def start_terms(d, rho, r):
    pos = rho > 0
    top = jnp.max(jnp.where(pos, r, -jnp.inf))
    scale = jnp.maximum(1.0, jnp.abs(top))
    mass_top = jnp.sum(jnp.where(pos & (r >= top - 1e-12 * scale), rho, 0.0))
    mean_d = jnp.sum(jnp.where(d > 0, d * r, 0.0))
    mean_rho = jnp.sum(jnp.where(pos, rho * r, 0.0))
    var_rho = jnp.sum(jnp.where(pos, rho * (r - mean_rho) ** 2, 0.0))
    return -jnp.log(mass_top), top - mean_d, mean_d - mean_rho, var_rho, scale

  neg_log_mass, headroom, gain, var, scale = map_prompts(start_terms)
  headroom, gain, var = weigh(headroom), weigh(gain), weigh(var)
  exists = (gain > 1e-12 * jnp.max(scale)) & (headroom > 1e-12 * jnp.max(scale))
  t_up = jnp.where(exists, weigh(neg_log_mass) / jnp.where(exists, headroom, 1.0), 1.0)
  t_up = jnp.maximum(t_up, jnp.exp(-LOG_BETA_BRACKET[1]))  # h(t_up) ≥ 0 also when mass_top = 1

  def h_and_slope(t):
    h_x, dh_x = map_prompts(lambda d, rho, r: _prompt_root_terms(d, rho, r, t))
    return weigh(h_x), weigh(dh_x)

  # Often much closer: the root of the quadratic model −gain·t + Var·t²/2, used when it is
  # to the right of the root (h ≥ 0 there), which one evaluation tells.
  t_quad = jnp.clip(2.0 * gain / jnp.where(var > 0, var, 1.0), jnp.exp(-LOG_BETA_BRACKET[1]), t_up)
  h_quad, dh_quad = h_and_slope(t_quad)
  # Left of the root but already rising: by convexity the tangent's zero lies right of the root.
  tangent = t_quad - h_quad / jnp.where(dh_quad > 0, dh_quad, 1.0)
  t_start = jnp.where(h_quad >= 0, t_quad,
                      jnp.where(dh_quad > 0, jnp.minimum(tangent, t_up), t_up))

  def cond(state):
    t, step, it = state
    return exists & (it < NEWTON_MAX_STEPS) & (jnp.abs(step) > 1e-14 * t)

  def body(state):
    t, _, it = state
    h, dh = h_and_slope(t)
    nxt = jnp.where(dh > 0, t - h / jnp.where(dh > 0, dh, 1.0), t)
    nxt = jnp.clip(nxt, 1e-6 * t, t)  # monotone from the right (convexity); guard rounding
    return nxt, nxt - t, it + 1

  state = (t_start.astype(dtype), jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32))
  t, _, _ = jax.lax.while_loop(cond, body, state)
  log_beta = -jnp.log(t)
  inside = (log_beta > LOG_BETA_BRACKET[0]) & (log_beta < LOG_BETA_BRACKET[1])
  return jnp.where(exists & inside, jnp.exp(log_beta), jnp.nan)


def beta_critical(inst: Instance) -> jax.Array:
  """D1 (ours): β_c with C₁(β_c; ρ) = 0, NaN when none (see ``critical_beta_from_terms``)."""
  xs = (inst.data, inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0))
  return critical_beta_from_terms(inst, lambda fn: jax.vmap(fn)(*xs))


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

r"""The non-decoupling threshold for exact RL (this project's D1; not the paper's).

When does exact RL from a reference ρ *lower* the SFT loss? By B3 the change is C₁(β; ρ), so exactly
when C₁(β; ρ) < 0, i.e. E_w E_d r > β E_w log E_ρ e^{r/β}; a necessary condition is
E_w E_d r > E_w E_ρ r. The critical β_c where C₁(β_c; ρ) = 0 is unique when it exists.

Key fact (ours): g(β) = β C₁(β; ρ) = β E_w log E_ρ e^{r/β} − E_w E_d r is non-increasing in β with
g'(β) = −E_w KL(π*_β ‖ ρ), falling from E_w max_{supp ρ} r − E_w E_d r (β → 0) to
E_w E_ρ r − E_w E_d r (β → ∞). So β_c exists iff E_w E_d r > E_w E_ρ r (and d is not concentrated on
the maximisers), it is unique, and exact RL lowers the SFT loss exactly for β > β_c.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import masked_dot
from ..instance import Instance
from ..objectives import c1, expect
from ..verdict import Verdict, at_least, positive

__all__ = ["scaled_c1", "critical_beta_from_terms", "beta_critical", "critical_beta_root",
           "critical_beta_sign", "rl_lowers_sft_needs_reward_gain"]

LOG_BETA_BRACKET = (-25.0, 25.0)  # β_c is searched in [e^-25, e^25] (about 1e-11 to 7e10)
NEWTON_MAX_STEPS = 200             # Newton from the right: a handful in practice


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
  gain = (expect(inst, masked_dot(inst.data, inst.reward)) - expect(inst, masked_dot(inst.reference, inst.reward)))
  # C₁ < 0 beyond rounding (C₁ is a difference of terms of size |r|/β).
  scale = jnp.maximum(1.0, jnp.max(jnp.abs(inst.reward)) / inst.beta)
  return positive(gain, applies=c1(inst) < -1e-12 * scale)

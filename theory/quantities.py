"""Every quantity `check` reports for one instance, as one pure (jit/vmap-able) function.

All of them are weighted sums over prompts of per-prompt terms, so they are computed prompt by
prompt (``prompt_terms``, one row [Y] at a time) and reduced with the prompt weights. Large
instances are processed in chunks of prompts (``jax.lax.map`` with ``batch_size``), so no
[X, Y] temporary is ever materialised: peak memory stays close to the input arrays. The same
code serves a batch of small instances under ``jax.vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._numerics import masked_dot, safe_log
from .instance import Instance
from .statements.critical_beta import critical_beta_from_terms

__all__ = ["check_quantities", "prompt_terms", "QUANTITY_DOCS", "CHUNK"]

CHUNK = 2048  # prompts per chunk (rows of [Y]); a chunk's temporaries are CHUNK x Y

QUANTITY_DOCS = {
    "sft_loss_data": "L(d) = E_w H(d_x), the SFT optimum",
    "sft_loss_reference": "L(ρ)",
    "sft_loss_rl": "L(π*_β), π*_β the Gibbs tilt of ρ",
    "c1": "C₁(β; ρ) = L(π*_β) − L(ρ)",
    "c1_sft_then_rl": "C₁(β) with ρ = d (Theorem 3.1)",
    "rl_value": "J_β(π*_β) = β E_w log Z_β",
    "reward_reference": "J(ρ)",
    "reward_rl": "J(π*_β)",
    "reward_data": "J(d)",
    "regularized_reward_data": "J_β(d; ρ)",
    "kl_rl_reference": "E_w KL(π*_β ‖ ρ)",
    "kl_data_rl": "E_w KL(d ‖ π*_β)",
    "hoeffding_bound": "E_w (max r − min r)²/(8β²), ranges over supp d",
    "sup_bound": "E_w [max r − E_d r]/β over supp d",
    "joint_tv": "E_w TV(d, π*_β)",
    "beta_critical": "β_c with C₁(β_c; ρ) = 0 (this project's D1; null when none)",
    "initial_slope": "dL/dt at t=0 along the RL flow from ρ (this project's D2)",
    "initial_curvature": "d²L/dt² at t=0 along RL from ρ = d (this project's D2)",
}

# Power of w_x each per-prompt term is weighted with (D2's forms carry w² and w³).
_WEIGHT_POWER = {"initial_slope": 2, "initial_curvature": 3}


def prompt_terms(d: jax.Array, rho: jax.Array, r: jax.Array, beta: jax.Array) -> dict:
  """Per-prompt terms of every quantity (one prompt: arrays [Y]; padded responses have d = ρ = 0).

  Written to need four transcendental evaluations per entry (log ρ, log d and one exponential
  for each of the two Gibbs tilts); the other terms follow by algebra, e.g.
  L_x(π*) = CE(d, ρ) − E_d r/β + log Z_x and KL(d‖π*) = L_x(π*) − H(d_x).

  Returns:
    dict name -> [] term; the quantity is sum_x w_x^k term_x (k = 1, or 2/3 for D2's forms).
  """
  log_rho, log_d = safe_log(rho), safe_log(d)
  support, reach = d > 0, rho > 0
  scaled = r / beta
  # Gibbs tilt of ρ with a single exponential per entry.
  logits = jnp.where(reach, log_rho + scaled, -jnp.inf)
  peak = jnp.max(logits)
  e = jnp.where(reach, jnp.exp(logits - peak), 0.0)
  z = jnp.sum(e)
  log_z = peak + jnp.log(z)
  pi = e / z
  # The same for the tilt of d (Theorem 3.1's log Z with ρ = d).
  logits_d = jnp.where(support, log_d + scaled, -jnp.inf)
  peak_d = jnp.max(logits_d)
  log_z_sft = peak_d + jnp.log(jnp.sum(jnp.where(support, jnp.exp(logits_d - peak_d), 0.0)))
  mean_d = masked_dot(d, r)
  entropy = -masked_dot(d, log_d)
  cross_rho = -masked_dot(d, log_rho)
  cross_rl = cross_rho - mean_d / beta + log_z
  reward_rl = jnp.sum(pi * r)
  top = jnp.max(jnp.where(support, r, -jnp.inf))
  bottom = jnp.min(jnp.where(support, r, jnp.inf))
  # D2: slope from ρ; curvature at ρ = d: (F r)ᵀ F (F r) with F = diag(d) − d dᵀ.
  centred = r - masked_dot(rho, r)
  slope = jnp.sum(jnp.where(reach, (rho - d) * rho * centred, 0.0))
  fisher = lambda v: jnp.where(support, d * (v - masked_dot(d, v)), 0.0)
  fr = fisher(r)
  return {
      "sft_loss_data": entropy,
      "sft_loss_reference": cross_rho,
      "sft_loss_rl": cross_rl,
      "c1": log_z - mean_d / beta,
      "c1_sft_then_rl": log_z_sft - mean_d / beta,
      "rl_value": beta * log_z,
      "reward_reference": masked_dot(rho, r),
      "reward_rl": reward_rl,
      "reward_data": mean_d,
      "regularized_reward_data": mean_d - beta * (cross_rho - entropy),
      "kl_rl_reference": reward_rl / beta - log_z,
      "kl_data_rl": cross_rl - entropy,
      "hoeffding_bound": (top - bottom) ** 2 / (8.0 * beta ** 2),
      "sup_bound": (top - mean_d) / beta,
      "joint_tv": 0.5 * jnp.sum(jnp.abs(d - pi)),
      "initial_slope": slope,
      "initial_curvature": jnp.sum(fr * fisher(fr)),
  }


def _map_prompts(fn, inst: Instance, chunk: int):
  """fn(d_x, ρ_x, r_x) for every prompt, chunked so temporaries are [chunk, Y]."""
  xs = (inst.data, inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0))
  if inst.data.shape[0] <= chunk:
    return jax.vmap(fn)(*xs)
  return jax.lax.map(lambda row: fn(*row), xs, batch_size=chunk)


def check_quantities(inst: Instance, chunk: int = CHUNK) -> dict[str, jax.Array]:
  """All scalar quantities of one instance (unbatched; vmap for batches).

  Args:
    inst: the instance.
    chunk: prompts processed at once (bounds the memory of temporaries).

  Returns:
    dict name -> [] array, names as in ``QUANTITY_DOCS``.
  """
  w = inst.prompt_weights
  terms = _map_prompts(lambda d, rho, r: prompt_terms(d, rho, r, inst.beta), inst, chunk)
  out = {}
  for name, term in terms.items():
    k = _WEIGHT_POWER.get(name, 1)
    out[name] = jnp.sum(jnp.where(w > 0, w ** k * jnp.where(w > 0, term, 0.0), 0.0))
  out["beta_critical"] = critical_beta_from_terms(
      inst, lambda fn: _map_prompts(fn, inst, chunk))
  return {k: out[k] for k in QUANTITY_DOCS}

"""Every quantity `check` reports for one instance, as one pure (jit/vmap-able) function.

All of them are weighted sums over prompts of per-prompt terms, so they are computed prompt by
prompt (``prompt_terms``, one row [Y] at a time) and reduced with the prompt weights. Large
instances are processed in chunks of prompts (``jax.lax.map`` with ``batch_size``), so no
[X, Y] temporary is ever materialised: peak memory stays close to the input arrays. The same
code serves a batch of small instances under ``jax.vmap``.

Every quantity that is a small difference of large terms is computed in a form that does not
cancel (see ``prompt_terms``): C₁ from the cumulant gap K_x of the centred tilt, every KL as a sum
of non-negative terms, L(π*_β) = L(ρ) + C₁, J_β(π*_β) = E_ρ r + β K, TV from ρ(e^u − 1), and the
D2 rates from rewards centred in two passes. They are right to a relative 1e-12 of the magnitudes
of their non-cancelling parts everywhere in the valid domain, near ties included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._numerics import centre, kl_from_log_ratio, masked_dot, safe_log
from .instance import Instance
from .statements.critical_beta import batch_beta_critical, critical_beta_from_terms
from .tilt import log_ratio_to, log_tilt, tilt, tilt_c1_rows, tilt_tv_rows

__all__ = ["check_quantities", "batch_check_quantities", "prompt_terms", "QUANTITY_DOCS", "CHUNK",
           "BATCH_CHUNK"]

CHUNK = 2048  # prompts per chunk (rows of [Y]); a chunk's temporaries are CHUNK x Y
BATCH_CHUNK = 128  # instances per chunk of a batch (batch_check_quantities; 64–128 fastest on 16 × 8)

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


def _kl_terms(p, log_ratio, q_outside):
  """KL(p‖q) of one row from log(q/p) on supp p and q off it (non-negative terms)."""
  return kl_from_log_ratio(p, log_ratio, q_outside)


def prompt_terms(d: jax.Array, rho: jax.Array, r: jax.Array, beta: jax.Array) -> dict:
  r"""Per-prompt terms of every quantity (one prompt: arrays [Y]; padded responses have d = ρ = 0).

  With the tilt of ρ (:func:`~._numerics.tilt`: c = (r − E_ρ r)/β, K = log E_ρ e^{c},
  u = log(π*/ρ) = c − K) and gain = Σ (d − ρ) r:

  - C₁(β; ρ) = K − gain/β or Σ d log(ρ/π*), whichever is more precise (:func:`~.tilt.tilt_c1_rows`),
    C₁(β) (ρ = d) = K of the tilt of d, L(π*) = −Σ d log π* (non-negative terms, log π* exact at
    the dominant response, :func:`~.tilt.log_tilt`);
  - KL(d‖ρ), KL(π*‖ρ), KL(d‖π*) as Σ_{p>0} p φ(log(q/p)) + q(outside supp p), φ(v) = e^v − 1 − v,
    with log(π*/d) from :func:`~.tilt.log_ratio_to`;
  - J_β(π*) = E_ρ r + β(K + δ), TV(d, π*) from (d − ρ) − ρ(e^u − 1) (:func:`~.tilt.tilt_tv_rows`),
    and the sup bound as E_d[max r − r]/β (non-negative terms).

  Returns:
    dict name -> [] term; the quantity is sum_x w_x^k term_x (k = 1, or 2/3 for D2's forms).

  Examples:
    >>> import jax.numpy as jnp
    >>> t = prompt_terms(jnp.array([0.5, 0.5]), jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0]), jnp.asarray(1.0))
    >>> round(float(t["c1"]), 6)  # this prompt's C₁: log((1 + e)/2) − ½
    0.120115
  """
  log_rho, log_d = safe_log(rho), safe_log(d)
  support, reach = d > 0, rho > 0
  t = tilt(rho, r, beta)
  u = jnp.where(reach, t.log_ratio, 0.0)
  log_pi = log_tilt(rho, t)
  pi = jnp.where(reach, jnp.exp(log_pi), 0.0)
  c1_rho = tilt_c1_rows(rho, t, d, r, beta)
  mean_d = masked_dot(d, r)
  entropy = -masked_dot(d, log_d)
  cross_rho = -masked_dot(d, log_rho)
  kl_d_rho = _kl_terms(d, jnp.where(support, log_rho - log_d, 0.0), rho)
  kl_d_pi = _kl_terms(d, jnp.where(support, log_ratio_to(rho, t, log_d), 0.0), pi)
  kl_pi_rho = _kl_terms(pi, -u, rho)
  top = jnp.max(jnp.where(support, r, -jnp.inf))
  bottom = jnp.min(jnp.where(support, r, jnp.inf))
  # D2: slope from ρ; curvature at ρ = d: Σ d (a − E_d a)², a = d ⊙ (r − E_d r).
  _, centred = centre(rho, r)
  slope = jnp.sum(jnp.where(reach, (rho - d) * rho * centred, 0.0))
  _, dev_d = centre(d, r)
  _, dev_a = centre(d, d * dev_d)
  return {
      "sft_loss_data": entropy,
      "sft_loss_reference": cross_rho,
      "sft_loss_rl": -masked_dot(d, log_pi),
      "c1": c1_rho,
      "c1_sft_then_rl": tilt(d, r, beta).gap,
      "rl_value": t.mean + beta * (t.gap + t.shift),
      "reward_reference": t.mean,
      "reward_rl": jnp.sum(pi * r),
      "reward_data": mean_d,
      "regularized_reward_data": mean_d - beta * kl_d_rho,
      "kl_rl_reference": kl_pi_rho,
      "kl_data_rl": kl_d_pi,
      "hoeffding_bound": ((top - bottom) / beta) ** 2 / 8.0,
      "sup_bound": masked_dot(d, top - r) / beta,
      "joint_tv": tilt_tv_rows(rho, t, d),
      "initial_slope": slope,
      "initial_curvature": jnp.sum(d * dev_a ** 2),
  }


def _map_rows(fn, xs: tuple, chunk: int):
  """fn(*row) for every row of the arrays xs [X, ...], chunked so temporaries are [chunk, Y]."""
  if xs[0].shape[0] <= chunk:
    return jax.vmap(fn)(*xs)
  return jax.lax.map(lambda row: fn(*row), xs, batch_size=chunk)


def _map_prompts(fn, inst: Instance, chunk: int):
  """fn(d_x, ρ_x, r_x) for every prompt, chunked so temporaries are [chunk, Y]."""
  xs = (inst.data, inst.reference, jnp.where(inst.response_mask, inst.reward, 0.0))
  return _map_rows(fn, xs, chunk)


def check_quantities(inst: Instance, chunk: int = CHUNK) -> dict[str, jax.Array]:
  """All scalar quantities of one instance (unbatched; vmap for batches).

  Args:
    inst: the instance.
    chunk: prompts processed at once (bounds the memory of temporaries).

  Returns:
    dict name -> [] array, names as in ``QUANTITY_DOCS``.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> q = check_quantities(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> round(float(q["c1"]), 6)  # log((1 + e)/2) − ½
    0.120115
  """
  if int(chunk) < 1:
    raise ValueError(f"chunk must be at least 1 prompt, got {chunk}")
  return _check_quantities_jit(inst, int(chunk))


def _weighted_terms(inst: Instance, chunk: int) -> dict[str, jax.Array]:
  """Every quantity but β_c: the per-prompt terms reduced with the prompt weights."""
  w = inst.prompt_weights
  terms = _map_prompts(lambda d, rho, r: prompt_terms(d, rho, r, inst.beta), inst, chunk)
  out = {}
  for name, term in terms.items():
    k = _WEIGHT_POWER.get(name, 1)
    out[name] = jnp.sum(jnp.where(w > 0, w ** k * jnp.where(w > 0, term, 0.0), 0.0))
  return out


def _check_quantities(inst: Instance, chunk: int) -> dict[str, jax.Array]:
  out = _weighted_terms(inst, chunk)
  out["beta_critical"] = critical_beta_from_terms(
      inst, lambda fn, *xs: _map_rows(fn, xs, chunk))
  return {k: out[k] for k in QUANTITY_DOCS}


# One compiled program (called eagerly, the ~300 primitives each compile and dispatch on their own:
# first call 5.1 → 1.9 s, a repeated one 0.6 s → under 1 ms on the README instance); inside a trace
# (vmap, lax.map, an outer jit) it is inlined.
_check_quantities_jit = jax.jit(_check_quantities, static_argnames="chunk")


def batch_check_quantities(batch: Instance, chunk: int = BATCH_CHUNK) -> dict[str, jax.Array]:
  """:func:`check_quantities` of every instance of a batch, ``chunk`` instances at a time.

  ``jax.lax.map`` with ``batch_size=chunk``: each chunk is one vmapped evaluation whose
  temporaries stay in the processor's cache, where ``jax.vmap`` over the whole batch makes every
  temporary batch-sized (4096 instances of 16 × 8 on one CPU core: 95 → 62 ms). The numbers are
  vmap's, except β_c (:func:`~.statements.critical_beta.batch_beta_critical`: the instances with
  a root first, chunks without one skip Newton), whose Newton iterates a chunk until its slowest
  instance has converged (a root moves within its tolerance ``NEWTON_RTOL`` when its chunk
  changes).

  Args:
    batch: instances with a leading batch axis [B, X, Y].
    chunk: instances per chunk (a remainder is one more, smaller chunk).

  Returns:
    dict name -> [B] array, names as in ``QUANTITY_DOCS``.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance, stack
    >>> one = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> q = batch_check_quantities(stack([one] * 3), chunk=2)
    >>> [round(float(v), 6) for v in q["c1"]]
    [0.120115, 0.120115, 0.120115]
  """
  if chunk < 1:
    raise ValueError(f"chunk must be at least 1 instance, got {chunk}")
  size = int(jax.tree.leaves(batch)[0].shape[0])
  chunk = min(int(chunk), max(size, 1))
  out = jax.lax.map(lambda inst: _weighted_terms(inst, CHUNK), batch, batch_size=chunk)
  out["beta_critical"] = batch_beta_critical(batch, chunk)
  return {k: out[k] for k in QUANTITY_DOCS}

r"""Theorem 3.1 (SFT-then-RL) and what this toolkit reports beside it (statement group C1).

The RL stage of SFT-then-RL starts from the exact SFT optimum, so its reference is ρ = d
(:func:`~nondecoupling.theory.instance.rl_stage_after_sft`). Theorem 3.1 (paper) says exact RL then
raises the SFT loss by C₁(β) = E_w[log E_d e^{r/β} − E_d r/β] = E_w KL(d‖π*_β) ≥ 0, with equality
iff r is constant on every supp d_x. The Hoeffding and sup bounds and both asymptotes (with
explicit remainders) are this project's (ours).

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 v1: Theorem 3.1 (Eq. 11-13).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import masked_dot, masked_max, masked_min
from ..instance import Instance, rl_stage_after_sft
from ..objectives import c1, expect, gibbs_tilt, kl_rows, safe_log, sft_loss
from ..verdict import Verdict, at_least, at_most, identity, positive

__all__ = [
    "support_range", "reward_constant_on_support", "hoeffding_bound", "sup_bound",
    "theorem_3_1", "c1_nonnegative", "c1_is_kl", "c1_zero_when_constant", "c1_positive_otherwise",
    "c1_hoeffding_bound", "c1_sup_bound", "c1_large_beta_limit", "c1_small_beta_limit",
]


def support_range(inst: Instance) -> jax.Array:
  """[X] max r − min r over supp d_x."""
  s = inst.data > 0
  return masked_max(inst.reward, s) - masked_min(inst.reward, s)


def reward_constant_on_support(inst: Instance, rtol: float = 1e-12) -> jax.Array:
  """[] True iff r(x, ·) is constant on supp d_x for every prompt with weight > 0."""
  scale = jnp.maximum(1.0, jnp.max(jnp.abs(inst.reward)))
  flat = support_range(inst) <= rtol * scale
  return jnp.all(flat | (inst.prompt_weights <= 0))



def theorem_3_1(inst: Instance) -> Verdict:
  r"""Theorem 3.1 (paper): with ρ = d, L(π*_β) = L(d) + C₁(β).

  lhs = L(π*_β(d)); rhs = L(d) + C₁(β; d).
  """
  sr = rl_stage_after_sft(inst)
  lhs = sft_loss(sr, gibbs_tilt(sr))
  rhs = sft_loss(sr, safe_log(inst.data)) + c1(sr)
  return identity(lhs, rhs)


def c1_nonnegative(inst: Instance) -> Verdict:
  """Theorem 3.1 (paper): C₁(β) ≥ 0 (Jensen gap)."""
  value = c1(rl_stage_after_sft(inst))
  return at_least(value, jnp.zeros(()))._replace(ratio=jnp.full((), jnp.nan))


def c1_is_kl(inst: Instance) -> Verdict:
  """C₁(β) = E_w KL(d_x || π*_x) with ρ = d (the KL identity behind the Jensen gap)."""
  sr = rl_stage_after_sft(inst)
  return identity(c1(sr), expect(sr, kl_rows(safe_log(inst.data), gibbs_tilt(sr))))


def c1_zero_when_constant(inst: Instance) -> Verdict:
  """Equality case: C₁ = 0 when r is constant on supp d_x for every x (applies only then)."""
  return identity(c1(rl_stage_after_sft(inst)), jnp.zeros(()), applies=reward_constant_on_support(inst))


def c1_positive_otherwise(inst: Instance) -> Verdict:
  """Equality case, converse: C₁ > 0 when r is not constant on some supp d_x (strict)."""
  return positive(c1(rl_stage_after_sft(inst)), applies=~reward_constant_on_support(inst))


def hoeffding_bound(inst: Instance) -> jax.Array:
  """E_w[(max r − min r)²] / (8β²), ranges over supp d_x (this project reports it beside C1)."""
  return expect(inst, support_range(inst) ** 2) / (8.0 * inst.beta ** 2)


def sup_bound(inst: Instance) -> jax.Array:
  """E_w[max_{supp d} r − E_d r] / β."""
  top = masked_max(inst.reward, inst.data > 0)
  return expect(inst, top - masked_dot(inst.data, inst.reward)) / inst.beta


def c1_hoeffding_bound(inst: Instance) -> Verdict:
  """C₁ ≤ E_w[(max r − min r)²]/(8β²) (Hoeffding's lemma; ours)."""
  return at_most(c1(rl_stage_after_sft(inst)), hoeffding_bound(inst))


def c1_sup_bound(inst: Instance) -> Verdict:
  """C₁ ≤ E_w[max r − E_d r]/β (ours)."""
  return at_most(c1(rl_stage_after_sft(inst)), sup_bound(inst))


def c1_large_beta_limit(inst: Instance) -> Verdict:
  r"""β → ∞ asymptote with an explicit remainder (ours).

  C₁ = E_w[K_x(1/β) − E_d r/β] with K_x the cumulant generating function of r under d_x, so by
  Taylor's theorem |C₁ − E_w Var_d(r)/(2β²)| ≤ E_w[range³]/(36√3 β³), because the third central
  moment of any distribution on an interval of length ℓ is at most ℓ³/(6√3) in absolute value.
  Hence β²C₁ → ½ E_w Var_d(r).
  """
  mean = masked_dot(inst.data, inst.reward)
  var = masked_dot(inst.data, (inst.reward - mean[:, None]) ** 2)
  lead = expect(inst, var) / (2.0 * inst.beta ** 2)
  remainder = expect(inst, support_range(inst) ** 3) / (36.0 * jnp.sqrt(3.0) * inst.beta ** 3)
  return at_most(jnp.abs(c1(rl_stage_after_sft(inst)) - lead), remainder)


def c1_small_beta_limit(inst: Instance) -> Verdict:
  r"""β → 0 asymptote as a two-sided bound (ours).

  With M_x the set of maximisers of r on supp d_x and d(M_x) its mass,
  E_w[max r − E_d r] + β E_w[log d(M_x)] ≤ β C₁ ≤ E_w[max r − E_d r], so βC₁ → E_w[max r − E_d r].
  Reported as: E_w[max r − E_d r] − β C₁ ≤ −β E_w log d(M_x).
  """
  top = masked_max(inst.reward, inst.data > 0)
  scale = jnp.maximum(1.0, jnp.abs(top))
  at_top = (inst.data > 0) & (inst.reward >= top[:, None] - 1e-12 * scale[:, None])
  mass_top = jnp.sum(jnp.where(at_top, inst.data, 0.0), axis=-1)
  gap = expect(inst, top - masked_dot(inst.data, inst.reward)) - inst.beta * c1(rl_stage_after_sft(inst))
  return at_most(gap, -inst.beta * expect(inst, jnp.log(mass_top)))



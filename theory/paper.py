r"""The paper's statements (THEORY.md part C), each returning its sides and a margin.

Pipelines, in the paper's notation:

- SFT-then-RL: base → SFT (π = d, the exact SFT optimum) → exact RL with reference ρ = d.
- RL-then-SFT: base ρ → exact RL π₁ = π*_β(ρ) → SFT π₂ (by default the SFT optimum d).

Statements that the paper states are marked ``paper``; the bounds and asymptotes beside
Theorem 3.1 and the repaired Theorem 4.1 (C4) are this project's (see theory/ours.py for D1-D3).

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 v1: Theorem 3.1 (Eq. 11-13), Proposition 1 (Eq. 15),
  Theorem 4.1 (Eq. 20) with Assumption 3 (Eq. 19).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from theory.instance import Instance
from theory.objectives import (
    c1, expect, gibbs_tilt, kl_rows, regularized_reward, reward, safe_log, sft_loss,
)
from theory.verdict import Verdict, at_least, at_most, identity, positive

__all__ = [
    "sft_then_rl", "rl_then_sft", "support_range", "reward_range", "max_abs_reward",
    "theorem_3_1", "c1_nonnegative", "c1_is_kl", "c1_zero_when_constant", "c1_positive_otherwise",
    "reward_constant_on_support", "c1_hoeffding_bound", "c1_sup_bound", "c1_large_beta_limit",
    "c1_small_beta_limit", "hoeffding_bound", "sup_bound",
    "proposition_1", "proposition_1_sharp", "theorem_4_1_as_printed", "theorem_4_1_repaired",
    "reward_drop_criterion", "DEFAULT_BAND",
]

DEFAULT_BAND = (0.01, 2.0)  # the KL band [a, A] of Assumption 3 used by verify (any a > 0 works)


def sft_then_rl(inst: Instance) -> Instance:
  """The instance of the RL stage of SFT-then-RL: the reference is the SFT optimum d."""
  return dataclasses.replace(inst, reference=inst.data)


def rl_then_sft(inst: Instance, log_pi2: jax.Array | None = None):
  """(log π₁, log π₂) of RL-then-SFT: π₁ = π*_β(ρ), π₂ = d unless given."""
  log_pi1 = gibbs_tilt(inst)
  log_pi2 = safe_log(inst.data) if log_pi2 is None else log_pi2
  return log_pi1, log_pi2


def _masked_max(x, mask):
  return jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1)


def _masked_min(x, mask):
  return jnp.min(jnp.where(mask, x, jnp.inf), axis=-1)


def support_range(inst: Instance) -> jax.Array:
  """[X] max r − min r over supp d_x."""
  s = inst.data > 0
  return _masked_max(inst.reward, s) - _masked_min(inst.reward, s)


def reward_range(inst: Instance) -> jax.Array:
  """[X] max_y r − min_y r over all (real) responses."""
  m = inst.response_mask
  return _masked_max(inst.reward, m) - _masked_min(inst.reward, m)


def max_abs_reward(inst: Instance) -> jax.Array:
  """R_max = max |r| over real entries of prompts with weight > 0 (Assumption 2)."""
  m = inst.response_mask & (inst.prompt_weights[:, None] > 0)
  return jnp.max(jnp.where(m, jnp.abs(inst.reward), 0.0))


def _mean_d(inst: Instance, f: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(inst.data > 0, inst.data * f, 0.0), axis=-1)


def reward_constant_on_support(inst: Instance, rtol: float = 1e-12) -> jax.Array:
  """[] True iff r(x, ·) is constant on supp d_x for every prompt with weight > 0."""
  scale = jnp.maximum(1.0, jnp.max(jnp.abs(inst.reward)))
  flat = support_range(inst) <= rtol * scale
  return jnp.all(flat | (inst.prompt_weights <= 0))


# --- C1: Theorem 3.1 and what the toolkit reports beside it ---------------------------------


def theorem_3_1(inst: Instance) -> Verdict:
  r"""Theorem 3.1 (paper): with ρ = d, L(π*_β) = L(d) + C₁(β).

  lhs = L(π*_β(d)); rhs = L(d) + C₁(β; d).
  """
  sr = sft_then_rl(inst)
  lhs = sft_loss(sr, gibbs_tilt(sr))
  rhs = sft_loss(sr, safe_log(inst.data)) + c1(sr)
  return identity(lhs, rhs)


def c1_nonnegative(inst: Instance) -> Verdict:
  """Theorem 3.1 (paper): C₁(β) ≥ 0 (Jensen gap)."""
  value = c1(sft_then_rl(inst))
  return at_least(value, jnp.zeros(()))._replace(ratio=jnp.full((), jnp.nan))


def c1_is_kl(inst: Instance) -> Verdict:
  """C₁(β) = E_w KL(d_x || π*_x) with ρ = d (the KL identity behind the Jensen gap)."""
  sr = sft_then_rl(inst)
  return identity(c1(sr), expect(sr, kl_rows(safe_log(inst.data), gibbs_tilt(sr))))


def c1_zero_when_constant(inst: Instance) -> Verdict:
  """Equality case: C₁ = 0 when r is constant on supp d_x for every x (applies only then)."""
  return identity(c1(sft_then_rl(inst)), jnp.zeros(()), applies=reward_constant_on_support(inst))


def c1_positive_otherwise(inst: Instance) -> Verdict:
  """Equality case, converse: C₁ > 0 when r is not constant on some supp d_x (strict)."""
  return positive(c1(sft_then_rl(inst)), applies=~reward_constant_on_support(inst))


def hoeffding_bound(inst: Instance) -> jax.Array:
  """E_w[(max r − min r)²] / (8β²), ranges over supp d_x (this project reports it beside C1)."""
  return expect(inst, support_range(inst) ** 2) / (8.0 * inst.beta ** 2)


def sup_bound(inst: Instance) -> jax.Array:
  """E_w[max_{supp d} r − E_d r] / β."""
  top = _masked_max(inst.reward, inst.data > 0)
  return expect(inst, top - _mean_d(inst, inst.reward)) / inst.beta


def c1_hoeffding_bound(inst: Instance) -> Verdict:
  """C₁ ≤ E_w[(max r − min r)²]/(8β²) (Hoeffding's lemma; ours)."""
  return at_most(c1(sft_then_rl(inst)), hoeffding_bound(inst))


def c1_sup_bound(inst: Instance) -> Verdict:
  """C₁ ≤ E_w[max r − E_d r]/β (ours)."""
  return at_most(c1(sft_then_rl(inst)), sup_bound(inst))


def c1_large_beta_limit(inst: Instance) -> Verdict:
  r"""β → ∞ asymptote with an explicit remainder (ours).

  C₁ = E_w[K_x(1/β) − E_d r/β] with K_x the cumulant generating function of r under d_x, so by
  Taylor's theorem |C₁ − E_w Var_d(r)/(2β²)| ≤ E_w[range³]/(36√3 β³), because the third central
  moment of any distribution on an interval of length ℓ is at most ℓ³/(6√3) in absolute value.
  Hence β²C₁ → ½ E_w Var_d(r).
  """
  mean = _mean_d(inst, inst.reward)
  var = _mean_d(inst, (inst.reward - mean[:, None]) ** 2)
  lead = expect(inst, var) / (2.0 * inst.beta ** 2)
  remainder = expect(inst, support_range(inst) ** 3) / (36.0 * jnp.sqrt(3.0) * inst.beta ** 3)
  return at_most(jnp.abs(c1(sft_then_rl(inst)) - lead), remainder)


def c1_small_beta_limit(inst: Instance) -> Verdict:
  r"""β → 0 asymptote as a two-sided bound (ours).

  With M_x the set of maximisers of r on supp d_x and d(M_x) its mass,
  E_w[max r − E_d r] + β E_w[log d(M_x)] ≤ β C₁ ≤ E_w[max r − E_d r], so βC₁ → E_w[max r − E_d r].
  Reported as: E_w[max r − E_d r] − β C₁ ≤ −β E_w log d(M_x).
  """
  top = _masked_max(inst.reward, inst.data > 0)
  scale = jnp.maximum(1.0, jnp.abs(top))
  at_top = (inst.data > 0) & (inst.reward >= top[:, None] - 1e-12 * scale[:, None])
  mass_top = jnp.sum(jnp.where(at_top, inst.data, 0.0), axis=-1)
  gap = expect(inst, top - _mean_d(inst, inst.reward)) - inst.beta * c1(sft_then_rl(inst))
  return at_most(gap, -inst.beta * expect(inst, jnp.log(mass_top)))


# --- C2-C4: RL-then-SFT ----------------------------------------------------------------------


def proposition_1(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Proposition 1 (paper): J(π₂) ≤ J(π₁) + R_max √(2B), B = E_w KL(π₂ || π₁)."""
  log_pi1, log_pi2 = rl_then_sft(inst, log_pi2)
  budget = jnp.maximum(expect(inst, kl_rows(log_pi2, log_pi1)), 0.0)  # rounding can dip below 0
  j1 = reward(inst, log_pi1)
  bound = j1 + max_abs_reward(inst) * jnp.sqrt(2.0 * budget)
  return at_most(reward(inst, log_pi2), bound, base=j1)


def proposition_1_sharp(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Proposition 1, sharper form: J(π₂) ≤ J(π₁) + E_w[(max r − min r) √(KL_x/2)]."""
  log_pi1, log_pi2 = rl_then_sft(inst, log_pi2)
  per_prompt = reward_range(inst) * jnp.sqrt(jnp.maximum(kl_rows(log_pi2, log_pi1), 0.0) / 2.0)
  j1 = reward(inst, log_pi1)
  return at_most(reward(inst, log_pi2), j1 + expect(inst, per_prompt), base=j1)


def theorem_4_1_as_printed(inst: Instance, log_pi2: jax.Array | None = None,
                           band=DEFAULT_BAND) -> Verdict:
  """Theorem 4.1 as printed (paper; FALSE): a ≤ E_w KL(π₂||π₁) ≤ A ⇒ J(π₂) ≤ J(π₁) − C₂, C₂ > 0.

  A single instance refutes it when its KL lies in the band and J(π₂) ≥ J(π₁): no C₂ > 0 exists.
  Margin = J(π₁) − J(π₂) (must be > 0: a strict statement); applies only inside the band.
  """
  log_pi1, log_pi2 = rl_then_sft(inst, log_pi2)
  kl = expect(inst, kl_rows(log_pi2, log_pi1))
  in_band = (kl >= band[0]) & (kl <= band[1])
  j1, j2 = reward(inst, log_pi1), reward(inst, log_pi2)
  return Verdict(j2, j1, j1 - j2, in_band, jnp.full((), jnp.nan))


def theorem_4_1_repaired(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Theorem 4.1 repaired (this project's C4): J_β(π₂) = J_β(π₁) − β E_w KL(π₂ || π₁).

  The KL-growth condition holds with equality and λ = β for the regularised objective (by B2),
  so under the band a ≤ E KL ≤ A the drop is C₂ = β·a at least, exactly β·KL.
  """
  log_pi1, log_pi2 = rl_then_sft(inst, log_pi2)
  kl = expect(inst, kl_rows(log_pi2, log_pi1))
  return identity(regularized_reward(inst, log_pi2),
                  regularized_reward(inst, log_pi1) - inst.beta * kl)


def reward_drop_criterion(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  r"""C4's exact criterion for the raw reward (ours, from B4).

  J(π₁) − J(π₂) = β (E KL(π₂||π₁) − [E KL(π₂||ρ) − E KL(π₁||ρ)]), so SFT lowers the reward iff
  E KL(π₂||π₁) > E KL(π₂||ρ) − E KL(π₁||ρ). lhs = the reward drop, rhs = β × the KL criterion.
  """
  log_pi1, log_pi2 = rl_then_sft(inst, log_pi2)
  log_rho = safe_log(inst.reference)
  kl21 = expect(inst, kl_rows(log_pi2, log_pi1))
  kl2r = expect(inst, kl_rows(log_pi2, log_rho))
  kl1r = expect(inst, kl_rows(log_pi1, log_rho))
  return identity(reward(inst, log_pi1) - reward(inst, log_pi2),
                  inst.beta * (kl21 - (kl2r - kl1r)))

r"""Theorem 3.1 (SFT-then-RL) and what this toolkit reports beside it (statement group C1).

The RL stage of SFT-then-RL starts from the exact SFT optimum, so its reference is ρ = d
(:func:`~nondecoupling.theory.instance.rl_stage_after_sft`). Theorem 3.1 (paper) says exact RL then
raises the SFT loss by C₁(β) = E_w[log E_d e^{r/β} − E_d r/β] = E_w KL(d‖π*_β) ≥ 0, with equality
iff r is constant on every supp d_x. The Hoeffding and sup bounds and both asymptotes (with
explicit remainders) are this project's (ours).

Rounding (see :mod:`..verdict`): C₁ is computed as Σ w K_x with K_x = log E_d e^{c} in log1p form
(:func:`~..objectives.c1_rows`), whose error scale is S_C₁ = Σ w [K + Σ|π* − d||c| + …]
(:func:`~..rounding.c1_scale`). Each statement's slack is γ_N times S_C₁ plus the magnitudes of
its other side: the cross-entropies Σ d(|log π*| + T) of Theorem 3.1, the KL scale of c1_is_kl,
the bound itself (×4: squares and divisions) for the Hoeffding, sup and β → ∞ bounds, and
Σ d(max r − r) + β S_C₁ + β(|log d(M)| + 1) for β → 0.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 v1: Theorem 3.1 (Eq. 11-13).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import centre, masked_dot, masked_max, masked_min
from ..instance import Instance, rl_stage_after_sft
from ..objectives import c1, expect, gibbs, gibbs_tilt, kl_rows, safe_log, sft_loss
from ..rounding import abs_log, c1_scale, cross_entropy_scale, entries, gibbs_scale, kl_scale
from ..verdict import Verdict, at_least, at_most, identity, positive, rounding_slack

__all__ = [
    "support_range", "reward_constant_on_support", "hoeffding_bound", "sup_bound",
    "theorem_3_1", "c1_nonnegative", "c1_is_kl", "c1_zero_when_constant", "c1_positive_otherwise",
    "c1_hoeffding_bound", "c1_sup_bound", "c1_large_beta_limit", "c1_small_beta_limit",
]


def support_range(inst: Instance) -> jax.Array:
  """[X] max r − min r over supp d_x.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> support_range(inst).tolist()  # max r − min r on supp d = 1 − 0
    [1.0]
  """
  s = inst.data > 0
  return masked_max(inst.reward, s) - masked_min(inst.reward, s)


def reward_constant_on_support(inst: Instance) -> jax.Array:
  """[] True iff r(x, ·) is exactly constant on supp d_x for every prompt with weight > 0.

  Exactly: a reward that varies by any amount, however small, makes C₁ > 0 (near ties give
  C₁ ≈ ½ E Var_d(r)/β², which is computed to full relative precision).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> bool(reward_constant_on_support(inst))  # r = (0, 1) varies on supp d
    False
  """
  flat = support_range(inst) == 0
  return jnp.all(flat | (inst.prompt_weights <= 0))


def _c1_and_slack(inst: Instance, extra_scale=0.0):
  """(C₁(β) with ρ = d, its rounding slack with ``extra_scale`` added to the scale, resolved)."""
  sr = rl_stage_after_sft(inst)
  t = gibbs(sr)
  value = c1(sr, t)
  scale = expect(sr, c1_scale(sr, gibbs_scale(sr, t))) + extra_scale
  resolved = ~reward_constant_on_support(inst)
  return value, rounding_slack(scale, entries(inst), resolved=resolved)


def theorem_3_1(inst: Instance) -> Verdict:
  r"""Theorem 3.1 (paper): with ρ = d, L(π*_β) = L(d) + C₁(β).

  lhs = L(π*_β(d)); rhs = L(d) + C₁(β; d).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = theorem_3_1(inst)
    >>> # L(π*) = log 2 + C₁, C₁ = log((1 + e)/2) − ½
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)
    (0.813262, 0.813262)
  """
  sr = rl_stage_after_sft(inst)
  t = gibbs(sr)
  log_pi = gibbs_tilt(sr, t)
  ts = gibbs_scale(sr, t)
  lhs = sft_loss(sr, log_pi)
  log_d = safe_log(inst.data)
  rhs = sft_loss(sr, log_d) + c1(sr, t)
  scale = expect(sr, cross_entropy_scale(inst.data, log_pi, ts.log_pi)
                 + 2.0 * cross_entropy_scale(inst.data, log_d, abs_log(log_d)) + c1_scale(sr, ts))
  return identity(lhs, rhs, rounding_slack(scale, entries(inst)))


def c1_nonnegative(inst: Instance) -> Verdict:
  """Theorem 3.1 (paper): C₁(β) ≥ 0 (Jensen gap).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_nonnegative(inst)
    >>> round(float(v.margin), 6)  # C₁ = log((1 + e)/2) − ½ ≥ 0
    0.120115
  """
  value, slack = _c1_and_slack(inst)
  return at_least(value, jnp.zeros(()), slack)._replace(ratio=jnp.full((), jnp.nan))


def c1_is_kl(inst: Instance) -> Verdict:
  """C₁(β) = E_w KL(d_x || π*_x) with ρ = d (the KL identity behind the Jensen gap).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_is_kl(inst)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # C₁ and E KL(d‖π*): both 0.120115
    (0.120115, 0.120115)
  """
  sr = rl_stage_after_sft(inst)
  log_d = safe_log(inst.data)
  t = gibbs(sr)
  ts = gibbs_scale(sr, t)
  log_star = gibbs_tilt(sr, t)
  kl = expect(sr, kl_rows(log_d, log_star))
  value, slack = _c1_and_slack(inst, expect(sr, kl_scale(log_d, log_star, abs_log(log_d),
                                                          ts.log_pi)))
  return identity(value, kl, slack)


def c1_zero_when_constant(inst: Instance) -> Verdict:
  """Equality case: C₁ = 0 when r is constant on supp d_x for every x (applies only then).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # r varies on supp d: the equality case does not apply
    >>> bool(c1_zero_when_constant(inst).applies)
    False
  """
  value, slack = _c1_and_slack(inst)
  return identity(value, jnp.zeros(()), slack, applies=reward_constant_on_support(inst))


def c1_positive_otherwise(inst: Instance) -> Verdict:
  """Equality case, converse: C₁ > 0 when r is not constant on some supp d_x (strict).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_positive_otherwise(inst)
    >>> bool(v.applies), round(float(v.margin), 6)  # applies (r varies), margin C₁ > 0
    (True, 0.120115)
  """
  value, slack = _c1_and_slack(inst)
  return positive(value, slack, applies=~reward_constant_on_support(inst))


def hoeffding_bound(inst: Instance) -> jax.Array:
  """E_w[(max r − min r)²] / (8β²), ranges over supp d_x (this project reports it beside C1).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(hoeffding_bound(inst))  # (1 − 0)² / (8 · 1²)
    0.125
  """
  return expect(inst, (support_range(inst) / inst.beta) ** 2) / 8.0


def _sup_terms(inst: Instance) -> jax.Array:
  """[X] E_d[max_{supp d} r − r] ≥ 0 (non-negative terms: no cancellation on near ties)."""
  top = masked_max(inst.reward, inst.data > 0)
  return masked_dot(inst.data, top[:, None] - inst.reward)


def sup_bound(inst: Instance) -> jax.Array:
  """E_w[max_{supp d} r − E_d r] / β.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(sup_bound(inst))  # (max r − E_d r)/β = (1 − ½)/1
    0.5
  """
  return expect(inst, _sup_terms(inst)) / inst.beta


def c1_hoeffding_bound(inst: Instance) -> Verdict:
  """C₁ ≤ E_w[(max r − min r)²]/(8β²) (Hoeffding's lemma; ours).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_hoeffding_bound(inst)
    >>> round(float(v.lhs), 6), float(v.rhs)  # C₁ ≤ 1/8
    (0.120115, 0.125)
  """
  bound = hoeffding_bound(inst)
  value, slack = _c1_and_slack(inst, 4.0 * bound)
  return at_most(value, bound, slack)


def c1_sup_bound(inst: Instance) -> Verdict:
  """C₁ ≤ E_w[max r − E_d r]/β (ours).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_sup_bound(inst)
    >>> round(float(v.lhs), 6), float(v.rhs)  # C₁ ≤ ½
    (0.120115, 0.5)
  """
  bound = sup_bound(inst)
  value, slack = _c1_and_slack(inst, 4.0 * bound)
  return at_most(value, bound, slack)


def c1_large_beta_limit(inst: Instance) -> Verdict:
  r"""β → ∞ asymptote with an explicit remainder (ours).

  C₁ = E_w[K_x(1/β) − E_d r/β] with K_x the cumulant generating function of r under d_x, so by
  Taylor's theorem |C₁ − E_w Var_d(r)/(2β²)| ≤ E_w[range³]/(36√3 β³), because the third central
  moment of any distribution on an interval of length ℓ is at most ℓ³/(6√3) in absolute value.
  Hence β²C₁ → ½ E_w Var_d(r).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_large_beta_limit(inst)
    >>> float(v.margin) >= -float(v.slack)  # holds
    True
  """
  _, dev = centre(inst.data, inst.reward)
  var = masked_dot(inst.data, (dev / inst.beta) ** 2)
  lead = expect(inst, var) / 2.0
  remainder = expect(inst, (support_range(inst) / inst.beta) ** 3) / (36.0 * jnp.sqrt(3.0))
  value, slack = _c1_and_slack(inst, 4.0 * (lead + remainder))
  return at_most(jnp.abs(value - lead), remainder, slack)


def c1_small_beta_limit(inst: Instance) -> Verdict:
  r"""β → 0 asymptote as a two-sided bound (ours).

  With M_x the set of maximisers of r on supp d_x and d(M_x) its mass,
  E_w[max r − E_d r] + β E_w[log d(M_x)] ≤ β C₁ ≤ E_w[max r − E_d r], so βC₁ → E_w[max r − E_d r].
  Reported as: E_w[max r − E_d r] − β C₁ ≤ −β E_w log d(M_x).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> v = c1_small_beta_limit(inst)
    >>> float(v.margin) >= -float(v.slack)  # holds
    True
  """
  top = masked_max(inst.reward, inst.data > 0)
  at_top = (inst.data > 0) & (inst.reward == top[:, None])
  mass_top = jnp.sum(jnp.where(at_top, inst.data, 0.0), axis=-1)
  headroom = expect(inst, _sup_terms(inst))
  value, slack = _c1_and_slack(inst)
  log_mass = expect(inst, jnp.log(mass_top))
  bound = -inst.beta * log_mass
  # log d(M) of a computed sum: absolute error ≤ its relative error (scale 1 per prompt, × β).
  slack = inst.beta * slack + rounding_slack(2.0 * (headroom + jnp.abs(bound)) + inst.beta,
                                             entries(inst))
  return at_most(headroom - inst.beta * value, bound, slack)

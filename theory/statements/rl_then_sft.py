r"""RL-then-SFT: Proposition 1, Theorem 4.1 as printed (false) and repaired (statements C2-C4).

The pipeline: base ρ → exact RL π₁ = π*_β(ρ) → SFT π₂ (by default the SFT optimum d). The paper's
Theorem 4.1 claims that a KL band a ≤ E_w KL(π₂‖π₁) ≤ A alone forces the reward down by some
C₂ > 0; that is false (a reward constant on the responses never moves). The repaired statement
(C4, ours): for the regularised objective the drop is exactly β E_w KL(π₂‖π₁) (B2), and for the
raw reward B4 gives the exact criterion for a drop.

Every KL here is computed in its non-negative form (:func:`~..objectives.kl_rows`), so the band
a ≤ E KL ≤ A and the budget B under Proposition 1's square root keep full relative precision
however small they are. Rounding (see :mod:`..verdict`): rewards contribute Σ(π₂ + π₁(1 + T))|r|
to the scale, KLs their :func:`~..rounding.kl_scale` (×β where β multiplies them), and a term
c √(x) the error c·min(√δ, δ/(2√x)) with δ = γ_N × the scale of x.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 v1: Proposition 1 (Eq. 15), Theorem 4.1 (Eq. 20) with
  Assumption 3 (Eq. 19).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import masked_max, masked_min
from ..instance import Instance
from ..objectives import (
  expect,
  gibbs,
  gibbs_tilt,
  kl_rows,
  kl_to_gibbs,
  regularized_reward,
  reward,
  safe_log,
)
from ..rounding import abs_log, entries, gibbs_scale, kl_scale, kl_to_gibbs_scale
from ..verdict import Verdict, at_most, gamma_for, identity, rounding_slack, sqrt_error
from .identities import reward_change_scale

__all__ = [
    "DEFAULT_BAND", "rl_then_sft_policies", "reward_range", "max_abs_reward", "proposition_1",
    "proposition_1_sharp", "theorem_4_1_as_printed", "theorem_4_1_repaired",
    "reward_drop_criterion",
]

DEFAULT_BAND = (0.01, 2.0)  # the KL band [a, A] of Assumption 3 used by verify (any a > 0 works)


def rl_then_sft_policies(inst: Instance, log_pi2: jax.Array | None = None, t=None):
  """(log π₁, log π₂) of RL-then-SFT: π₁ = π*_β(ρ), π₂ = d unless given (``t`` = gibbs(inst)).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> log_pi1, log_pi2 = rl_then_sft_policies(inst)
    >>> # π₁ = π*_β(ρ) ∝ (¾, ¼e); π₂ = d
    >>> [round(v, 6) for v in jnp.exp(log_pi1[0]).tolist()], jnp.exp(log_pi2).tolist()
    ([0.524633, 0.475367], [[0.5, 0.5]])
  """
  log_pi1 = gibbs_tilt(inst, t)
  log_pi2 = safe_log(inst.data) if log_pi2 is None else log_pi2
  return log_pi1, log_pi2


def reward_range(inst: Instance) -> jax.Array:
  """[X] max_y r − min_y r over all (real) responses.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> reward_range(inst).tolist()  # max r − min r
    [1.0]
  """
  m = inst.response_mask
  return masked_max(inst.reward, m) - masked_min(inst.reward, m)


def max_abs_reward(inst: Instance) -> jax.Array:
  """R_max = max |r| over real entries of prompts with weight > 0 (Assumption 2).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> float(max_abs_reward(inst))  # R_max
    1.0
  """
  m = inst.response_mask & (inst.prompt_weights[:, None] > 0)
  return jnp.max(jnp.where(m, jnp.abs(inst.reward), 0.0))



def _pipeline_scales(inst: Instance, log_pi2: jax.Array, t):
  """([X] Σ(π₂ + π₁(2 + T))|r| — the rewards' scale, [X] KL(π₂‖π₁)'s scale, the tilt's scales)."""
  ts = gibbs_scale(inst, t)
  r = jnp.abs(jnp.where(inst.response_mask, inst.reward, 0.0))
  rewards = jnp.sum((2.0 * jnp.exp(log_pi2) + ts.pi * (2.0 + ts.log_pi)) * r, axis=-1)
  return rewards, kl_to_gibbs_scale(inst, log_pi2, ts, t), ts


def proposition_1(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Proposition 1 (paper): J(π₂) ≤ J(π₁) + R_max √(2B), B = E_w KL(π₂ || π₁).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = proposition_1(inst)
    >>> float(v.margin) >= -float(v.slack)  # J(d) ≤ J(π₁) + R_max √(2B)
    True
  """
  t = gibbs(inst)
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2, t)
  budget = expect(inst, kl_to_gibbs(inst, log_pi2, t))  # ≥ 0, full relative precision
  j1 = reward(inst, log_pi1)
  r_max = max_abs_reward(inst)
  root = r_max * jnp.sqrt(2.0 * budget)
  bound = j1 + root
  rewards, kl, _ = _pipeline_scales(inst, log_pi2, t)
  n = entries(inst)
  err_b = gamma_for(n, budget.dtype) * expect(inst, kl)
  slack = rounding_slack(expect(inst, rewards) + 2.0 * root, n,
                         extra=r_max * sqrt_error(2.0 * budget, 2.0 * err_b))
  return at_most(reward(inst, log_pi2), bound, slack, base=j1)


def proposition_1_sharp(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Proposition 1, sharper form: J(π₂) ≤ J(π₁) + E_w[(max r − min r) √(KL_x/2)].

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = proposition_1_sharp(inst)
    >>> float(v.margin) >= -float(v.slack)  # holds
    True
  """
  t = gibbs(inst)
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2, t)
  kl_x = kl_to_gibbs(inst, log_pi2, t)
  spread = reward_range(inst)
  per_prompt = spread * jnp.sqrt(kl_x / 2.0)
  j1 = reward(inst, log_pi1)
  rewards, kl, _ = _pipeline_scales(inst, log_pi2, t)
  n = entries(inst)
  err = gamma_for(n, kl_x.dtype) * kl
  roots = expect(inst, spread * sqrt_error(kl_x / 2.0, err / 2.0))
  slack = rounding_slack(expect(inst, rewards + 2.0 * per_prompt), n, extra=roots)
  return at_most(reward(inst, log_pi2), j1 + expect(inst, per_prompt), slack, base=j1)


def theorem_4_1_as_printed(inst: Instance, log_pi2: jax.Array | None = None,
                           band=DEFAULT_BAND) -> Verdict:
  """Theorem 4.1 as printed (paper; FALSE): a ≤ E_w KL(π₂||π₁) ≤ A ⇒ J(π₂) ≤ J(π₁) − C₂, C₂ > 0.

  A single instance refutes it when its KL lies in the band and J(π₂) ≥ J(π₁): no C₂ > 0 exists.
  Margin = J(π₁) − J(π₂) (must be > 0: a strict statement); applies only inside the band. The
  slack is the rounding bound of the two rewards, so a reward that never moves (every term
  exactly 0) has slack 0 and refutes it exactly.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = theorem_4_1_as_printed(inst, band=(1e-4, 2.0))  # KL(d‖π₁) = 6.1e-4 is in this band
    >>> bool(v.applies), round(float(v.margin), 6)  # SFT raised the reward by 0.024633: refuted
    (True, -0.024633)
  """
  t = gibbs(inst)
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2, t)
  kl = expect(inst, kl_to_gibbs(inst, log_pi2, t))
  in_band = (kl >= band[0]) & (kl <= band[1])
  j1, j2 = reward(inst, log_pi1), reward(inst, log_pi2)
  rewards, _, _ = _pipeline_scales(inst, log_pi2, t)
  slack = rounding_slack(expect(inst, rewards), entries(inst))
  return Verdict(j2, j1, j1 - j2, in_band, jnp.full((), jnp.nan), slack)


def theorem_4_1_repaired(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Theorem 4.1 repaired (this project's C4): J_β(π₂) = J_β(π₁) − β E_w KL(π₂ || π₁).

  The KL-growth condition holds with equality and λ = β for the regularised objective (by B2),
  so under the band a ≤ E KL ≤ A the drop is C₂ = β·a at least, exactly β·KL.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = theorem_4_1_repaired(inst)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # J_β(d) = J_β(π₁) − β E KL(d‖π₁)
    (0.356159, 0.356159)
  """
  t = gibbs(inst)
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2, t)
  kl = expect(inst, kl_to_gibbs(inst, log_pi2, t))
  log_rho = safe_log(inst.reference)
  rewards, kl21, ts = _pipeline_scales(inst, log_pi2, t)
  scale = expect(inst, rewards + inst.beta * (
      kl21 + kl_scale(log_pi2, log_rho, abs_log(log_pi2), abs_log(log_rho))
      + kl_scale(log_pi1, log_rho, ts.log_pi, abs_log(log_rho)) + 6.0))
  return identity(regularized_reward(inst, log_pi2),
                  regularized_reward(inst, log_pi1) - inst.beta * kl,
                  rounding_slack(scale, entries(inst)))


def reward_drop_criterion(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  r"""C4's exact criterion for the raw reward (ours, from B4).

  J(π₁) − J(π₂) = β (E KL(π₂||π₁) − [E KL(π₂||ρ) − E KL(π₁||ρ)]), so SFT lowers the reward iff
  E KL(π₂||π₁) > E KL(π₂||ρ) − E KL(π₁||ρ). lhs = the reward drop, rhs = β × the KL criterion.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.75, 0.25]])
    >>> v = reward_drop_criterion(inst)
    >>> float(v.margin) >= -float(v.slack)  # holds
    True
  """
  t = gibbs(inst)
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2, t)
  log_rho = safe_log(inst.reference)
  kl21 = expect(inst, kl_rows(log_pi2, log_pi1))
  kl2r = expect(inst, kl_rows(log_pi2, log_rho))
  kl1r = expect(inst, kl_rows(log_pi1, log_rho))
  return identity(reward(inst, log_pi1) - reward(inst, log_pi2),
                  inst.beta * (kl21 - (kl2r - kl1r)),
                  rounding_slack(reward_change_scale(inst, log_pi2, t), entries(inst)))

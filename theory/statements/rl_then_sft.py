r"""RL-then-SFT: Proposition 1, Theorem 4.1 as printed (false) and repaired (statements C2-C4).

The pipeline: base ρ → exact RL π₁ = π*_β(ρ) → SFT π₂ (by default the SFT optimum d). The paper's
Theorem 4.1 claims that a KL band a ≤ E_w KL(π₂‖π₁) ≤ A alone forces the reward down by some
C₂ > 0; that is false (a reward constant on the responses never moves). The repaired statement
(C4, ours): for the regularised objective the drop is exactly β E_w KL(π₂‖π₁) (B2), and for the
raw reward B4 gives the exact criterion for a drop.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389 v1: Proposition 1 (Eq. 15), Theorem 4.1 (Eq. 20) with
  Assumption 3 (Eq. 19).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import masked_max, masked_min
from ..instance import Instance
from ..objectives import expect, gibbs_tilt, kl_rows, regularized_reward, reward, safe_log
from ..verdict import Verdict, at_most, identity

__all__ = [
    "DEFAULT_BAND", "rl_then_sft_policies", "reward_range", "max_abs_reward", "proposition_1",
    "proposition_1_sharp", "theorem_4_1_as_printed", "theorem_4_1_repaired",
    "reward_drop_criterion",
]

DEFAULT_BAND = (0.01, 2.0)  # the KL band [a, A] of Assumption 3 used by verify (any a > 0 works)


def rl_then_sft_policies(inst: Instance, log_pi2: jax.Array | None = None):
  """(log π₁, log π₂) of RL-then-SFT: π₁ = π*_β(ρ), π₂ = d unless given."""
  log_pi1 = gibbs_tilt(inst)
  log_pi2 = safe_log(inst.data) if log_pi2 is None else log_pi2
  return log_pi1, log_pi2


def reward_range(inst: Instance) -> jax.Array:
  """[X] max_y r − min_y r over all (real) responses."""
  m = inst.response_mask
  return masked_max(inst.reward, m) - masked_min(inst.reward, m)


def max_abs_reward(inst: Instance) -> jax.Array:
  """R_max = max |r| over real entries of prompts with weight > 0 (Assumption 2)."""
  m = inst.response_mask & (inst.prompt_weights[:, None] > 0)
  return jnp.max(jnp.where(m, jnp.abs(inst.reward), 0.0))



def proposition_1(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Proposition 1 (paper): J(π₂) ≤ J(π₁) + R_max √(2B), B = E_w KL(π₂ || π₁)."""
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2)
  budget = jnp.maximum(expect(inst, kl_rows(log_pi2, log_pi1)), 0.0)  # rounding can dip below 0
  j1 = reward(inst, log_pi1)
  bound = j1 + max_abs_reward(inst) * jnp.sqrt(2.0 * budget)
  return at_most(reward(inst, log_pi2), bound, base=j1)


def proposition_1_sharp(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Proposition 1, sharper form: J(π₂) ≤ J(π₁) + E_w[(max r − min r) √(KL_x/2)]."""
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2)
  per_prompt = reward_range(inst) * jnp.sqrt(jnp.maximum(kl_rows(log_pi2, log_pi1), 0.0) / 2.0)
  j1 = reward(inst, log_pi1)
  return at_most(reward(inst, log_pi2), j1 + expect(inst, per_prompt), base=j1)


def theorem_4_1_as_printed(inst: Instance, log_pi2: jax.Array | None = None,
                           band=DEFAULT_BAND) -> Verdict:
  """Theorem 4.1 as printed (paper; FALSE): a ≤ E_w KL(π₂||π₁) ≤ A ⇒ J(π₂) ≤ J(π₁) − C₂, C₂ > 0.

  A single instance refutes it when its KL lies in the band and J(π₂) ≥ J(π₁): no C₂ > 0 exists.
  Margin = J(π₁) − J(π₂) (must be > 0: a strict statement); applies only inside the band.
  """
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2)
  kl = expect(inst, kl_rows(log_pi2, log_pi1))
  in_band = (kl >= band[0]) & (kl <= band[1])
  j1, j2 = reward(inst, log_pi1), reward(inst, log_pi2)
  return Verdict(j2, j1, j1 - j2, in_band, jnp.full((), jnp.nan))


def theorem_4_1_repaired(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  """Theorem 4.1 repaired (this project's C4): J_β(π₂) = J_β(π₁) − β E_w KL(π₂ || π₁).

  The KL-growth condition holds with equality and λ = β for the regularised objective (by B2),
  so under the band a ≤ E KL ≤ A the drop is C₂ = β·a at least, exactly β·KL.
  """
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2)
  kl = expect(inst, kl_rows(log_pi2, log_pi1))
  return identity(regularized_reward(inst, log_pi2),
                  regularized_reward(inst, log_pi1) - inst.beta * kl)


def reward_drop_criterion(inst: Instance, log_pi2: jax.Array | None = None) -> Verdict:
  r"""C4's exact criterion for the raw reward (ours, from B4).

  J(π₁) − J(π₂) = β (E KL(π₂||π₁) − [E KL(π₂||ρ) − E KL(π₁||ρ)]), so SFT lowers the reward iff
  E KL(π₂||π₁) > E KL(π₂||ρ) − E KL(π₁||ρ). lhs = the reward drop, rhs = β × the KL criterion.
  """
  log_pi1, log_pi2 = rl_then_sft_policies(inst, log_pi2)
  log_rho = safe_log(inst.reference)
  kl21 = expect(inst, kl_rows(log_pi2, log_pi1))
  kl2r = expect(inst, kl_rows(log_pi2, log_rho))
  kl1r = expect(inst, kl_rows(log_pi1, log_rho))
  return identity(reward(inst, log_pi1) - reward(inst, log_pi2),
                  inst.beta * (kl21 - (kl2r - kl1r)))

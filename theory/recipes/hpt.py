r"""HPT (Lv et al., arXiv 2509.04419): SFT iff K ≤ γ of n rollouts succeed, else RL on the rollouts.

Exact field: β_sft Pr(K ≤ γ) (d − π) + F_π b with b the gated group advantage (Rule 5).

References: fusion-methods.md §2 (TsinghuaC3I/Unify-Post-Training, mix_trainer.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec
from .base import Recipe, finish, policy
from .groups import (
  binomial_gate_probability,
  enumerated_advantage,
  fill_reward_levels,
  gated_mean_advantage,
  resolve_levels,
  sample_group_advantage,
  success,
  success_stats,
)
from .sampling import Draws, score

__all__ = ["HPTConfig", "hpt_field", "hpt_estimate", "HPT"]


@dataclasses.dataclass(frozen=True)
class HPTConfig:
  """HPT (switch): SFT iff K ≤ γ correct of n rollouts, else Dr.GRPO-style RL on the n rollouts.

  Defaults (Unify-Post-Training exp_scripts/train.sh, Qwen2.5-Math-7B): n = 8, γ = 0,
  sft_loss_coef 1.0, grpo_use_std False, no clip, entropy 0.001. The RL term is the mean over the
  group (the code's sum/L_max scale is a batch-dependent constant: fusion-methods.md §2).
  """
  n_rollouts: int = 8
  switch_gate: int = 0
  sft_coef: float = 1.0
  rl_coef: float = 1.0
  use_std: bool = False
  eps: float = 1e-6
  entropy_coef: float = 0.001
  success_threshold: float = 0.0
  reward_levels: int | None = None


def hpt_field(inst, theta, theta_old, cfg: HPTConfig):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  n, gamma = cfg.n_rollouts, cfg.switch_gate
  p = success_stats(inst, pi_old, cfg.success_threshold)[0]
  sft_weight = binomial_gate_probability(p, n, 0, gamma)[:, None]
  if cfg.use_std:
    m = resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = enumerated_advantage(inst, pi_old, n - 1, m, True, cfg.eps,
                                         cfg.success_threshold, gate=(gamma + 1, n))
    b = a_pos - a_neg
  else:
    b = gated_mean_advantage(inst, pi_old, n, gamma + 1, cfg.success_threshold)
  g = (cfg.sft_coef * sft_weight * (inst.data - pi) + cfg.rl_coef * fisher_matvec(pi, b)
       + cfg.entropy_coef * entropy_grad(pi, log_pi))
  return finish(inst, g)


def hpt_estimate(inst, theta, theta_old, cfg: HPTConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  succ = success(inst, cfg.success_threshold)

  def row(p, p_old, r, s, idx, demo):
    k = jnp.sum(s[idx])
    adv = sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    rl = jnp.mean((adv * ratio)[:, None] * score(p, idx), axis=0)
    sft = score(p, demo[None])[0]
    return jnp.where(k <= cfg.switch_gate, cfg.sft_coef * sft, cfg.rl_coef * rl)

  g = jax.vmap(row)(pi, pi_old, inst.reward, succ, draws.on, draws.demo)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


HPT = Recipe("hpt", HPTConfig(), hpt_field, hpt_estimate, lambda cfg: cfg.n_rollouts,
             "gate K ≤ γ of n: SFT (π_ref = π_θ) else RL (π_ref = π_old, Â = r − mean)",
             prepare=fill_reward_levels)

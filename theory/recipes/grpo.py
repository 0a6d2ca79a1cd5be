r"""GRPO and Dr.GRPO: group-normalised advantages, a clipped ratio and a KL term.

GRPO (Shao et al., arXiv 2402.03300): Â_i = (r_i − mean)/(std + ε) over a group of G on-policy
samples, PPO clip on the ratio, k3 KL loss. Dr.GRPO (Liu et al., arXiv 2503.20783): no std, no
length normaliser, no KL: g = (1 − 1/G) F_π (r − V). With one inner step per batch θ = θ_old, the
ratio is 1 and the clip is inert (fusion-methods.md Rule 3), in the exact field and the estimator.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec
from .base import Recipe, finish, policy
from .groups import (
  clip_weight,
  enumerated_advantage,
  fill_reward_levels,
  resolve_levels,
  sample_group_advantage,
  value,
)
from .kl import kl_estimate_row, kl_field
from .sampling import Draws, score

__all__ = ["GroupPGConfig", "group_pg_field", "group_pg_estimate", "GRPO", "GRPO_REVERSE_KL",
           "DR_GRPO"]


@dataclasses.dataclass(frozen=True)
class GroupPGConfig:
  """GRPO / Dr.GRPO: group-normalised advantage, clipped ratio, KL term.

  Defaults (GRPO): group of 8 (rollout.n of the fusion repos' GRPO runs; DeepSeekMath used 64),
  std normalisation (unbiased, eps 1e-6, as verl), clip ε = 0.2, one inner step, k3 KL loss with
  coefficient 0.04 (DeepSeekMath, [UNCONFIRMED] in the notes). The clip is applied only when
  inner_steps > 1: with one step per batch θ = θ_old, the ratio is 1 and the clip is inert
  (fusion-methods.md Rule 3), in the exact field and in the estimator alike.
  """
  group_size: int = 8
  use_std: bool = True
  eps: float = 1e-6
  clip_low: float = 0.2
  clip_high: float = 0.2
  inner_steps: int = 1
  kl_coef: float = 0.04
  kl_form: str = "k3_loss"    # "k3_loss" (as implemented: forward KL), "reverse", "none"
  entropy_coef: float = 0.0
  reward_levels: int | None = None  # distinct rewards per prompt (None: read from the instance)


def group_pg_field(inst, theta, theta_old, cfg: GroupPGConfig):
  log_pi, pi = policy(inst, theta)
  log_old, pi_old = policy(inst, theta_old)
  clip_active = cfg.inner_steps > 1
  if cfg.use_std or clip_active:
    m = resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = enumerated_advantage(inst, pi_old, cfg.group_size - 1, m, cfg.use_std,
                                         cfg.eps, 0.0)
    ratio = jnp.exp(jnp.where(pi > 0, log_pi - log_old, 0.0))
    if clip_active:
      b = clip_weight(a_pos, a_neg, ratio, cfg.clip_low, cfg.clip_high)
    else:
      b = a_pos - a_neg
  else:
    g_inv = 1.0 / cfg.group_size
    b = (1.0 - g_inv) * (inst.reward - value(pi_old, inst.reward))
  g = fisher_matvec(pi, b)
  g = g - cfg.kl_coef * kl_field(pi, log_pi, pi_old, inst.reference, cfg.kl_form)
  g = g + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def group_pg_estimate(inst, theta, theta_old, cfg: GroupPGConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)

  clip_active = cfg.inner_steps > 1

  def row(p, lp, p_old, r, ref, idx):
    adv = sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    stable = ~(((adv > 0) & (ratio > 1.0 + cfg.clip_high))
               | ((adv < 0) & (ratio < 1.0 - cfg.clip_low))) | (not clip_active)
    g = jnp.mean((jnp.where(stable, adv, 0.0) * ratio)[:, None] * score(p, idx), axis=0)
    return g - cfg.kl_coef * kl_estimate_row(p, lp, p_old, ref, idx, cfg.kl_form)

  g = jax.vmap(row)(pi, log_pi, pi_old, inst.reward, inst.reference, draws.on)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


def _group(cfg: GroupPGConfig) -> int:
  return cfg.group_size


def _inner(cfg: GroupPGConfig) -> int:
  return cfg.inner_steps


GRPO = Recipe("grpo", GroupPGConfig(), group_pg_field, group_pg_estimate, _group,
              "π_ref = π_old, clip, Â = (r − mean)/std over G, k3 KL loss (forward KL)",
              inner_steps=_inner, prepare=fill_reward_levels)
GRPO_REVERSE_KL = dataclasses.replace(GRPO, name="grpo_reverse_kl",
                                      config=GroupPGConfig(kl_form="reverse"),
                                      summary="GRPO with the intended reverse KL(π‖ρ) gradient")
DR_GRPO = dataclasses.replace(
    GRPO, name="dr_grpo", config=GroupPGConfig(use_std=False, kl_coef=0.0, kl_form="none"),
    summary="π_ref = π_old, clip, Â = r − mean over G: g = (1 − 1/G) F_π (r − V)")

r"""SRFT (Fu et al., arXiv 2506.19767): entropy-weighted SFT, demonstration RL and self RL.

References: fusion-methods.md §5 (the HPT re-implementation, branch ``srft``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, entropy_rows, fisher_matvec
from .base import Recipe, finish, policy
from .demonstrations import demo_apply, mixed_group_advantages, mixed_group_sample, shaping_weight
from .groups import fill_reward_levels, success
from .sampling import Draws, score

__all__ = ["SRFTConfig", "srft_field", "srft_estimate", "SRFT"]


@dataclasses.dataclass(frozen=True)
class SRFTConfig:
  """SRFT: entropy-weighted SFT (0.5 e^{−H}), demo RL (π_ref ≡ 1), self RL (0.1 e^{+H} on y⁺).

  Defaults: weights 0.5 and 0.1 (HPT re-implementation, branch ``srft``; the sign of H in the
  positive weight is [UNCONFIRMED] against the paper), mixed group of 7 + 1 for the demo
  advantage, no std (HPT's SRFT baseline; the paper normalises by std: use_std=True), no shaping.
  """
  n_on: int = 7
  sft_coef: float = 0.5
  rl_pos_coef: float = 0.1
  use_std: bool = False
  eps: float = 1e-6
  shaping_gamma: float | None = None
  entropy_coef: float = 0.0
  success_threshold: float = 0.0
  reward_levels: int | None = None


def srft_field(inst, theta, theta_old, cfg: SRFTConfig):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  h = entropy_rows(pi)[:, None]
  succ = success(inst, cfg.success_threshold).astype(pi.dtype)
  _, a_off = mixed_group_advantages(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps,
                                     cfg.reward_levels)
  sft = cfg.sft_coef * jnp.exp(-h) * (inst.data - pi)
  u = jnp.where(inst.data > 0, inst.data * a_off * shaping_weight(pi, cfg.shaping_gamma), 0.0)
  demo_rl = demo_apply(pi, u)
  w_pos = cfg.rl_pos_coef * jnp.exp(h)
  self_rl = fisher_matvec(pi, w_pos * succ - (1.0 - succ))
  g = sft + demo_rl + self_rl + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def srft_estimate(inst, theta, theta_old, cfg: SRFTConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  h = entropy_rows(pi)[:, None][:, 0]
  succ = success(inst, cfg.success_threshold).astype(pi.dtype)

  def row(p, p_old, r, s, hx, idx, demo):
    _, adv_off = mixed_group_sample(p, p_old, r, idx, demo, cfg.use_std, cfg.eps)
    score_demo = score(p, demo[None])[0]
    sft = cfg.sft_coef * jnp.exp(-hx) * score_demo
    demo_rl = adv_off * shaping_weight(p[demo], cfg.shaping_gamma) * score_demo
    ratio = p[idx] / p_old[idx]
    weight = cfg.rl_pos_coef * jnp.exp(hx) * s[idx] - (1.0 - s[idx])
    self_rl = jnp.mean((weight * ratio)[:, None] * score(p, idx), axis=0)
    return sft + demo_rl + self_rl

  g = jax.vmap(row)(pi, pi_old, inst.reward, succ, h, draws.on, draws.demo)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


SRFT = Recipe("srft", SRFTConfig(), srft_field, srft_estimate, lambda cfg: cfg.n_on,
              "0.5 e^{−H} SFT + demo RL (π_ref ≡ 1) + self RL (0.1 e^{H} on y⁺, −1 on y⁻)",
              prepare=fill_reward_levels)

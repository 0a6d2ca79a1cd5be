r"""LUFFY (Yan et al., arXiv 2504.14945): a mixed group of on-policy samples and one demonstration.

The demonstration's term has behaviour probability 1 and the shaping f(π) = π/(π + γ).

References: fusion-methods.md §4 (ElliottYan/LUFFY, mix_core_alg.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec
from .base import Recipe, finish, policy
from .demonstrations import demo_apply, mixed_group_advantages, mixed_group_sample, shaping_weight
from .groups import fill_reward_levels
from .sampling import Draws, score

__all__ = ["LUFFYConfig", "luffy_field", "luffy_estimate", "LUFFY"]


@dataclasses.dataclass(frozen=True)
class LUFFYConfig:
  """LUFFY: mixed group (7 on-policy + 1 demonstration), shaping f(π) = π/(π + γ) on the demo.

  Defaults (ElliottYan/LUFFY exp_scripts/train.sh): n_on 7, one full demonstration, γ = 0.1,
  grpo_use_std False, clip removed, entropy 0.001. shaping_gamma None means no reshape
  (behaviour probability 1: weight π(y*)).
  """
  n_on: int = 7
  shaping_gamma: float | None = 0.1
  use_std: bool = False
  eps: float = 1e-6
  entropy_coef: float = 0.001
  reward_levels: int | None = None


def luffy_field(inst, theta, theta_old, cfg: LUFFYConfig):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  n = cfg.n_on + 1
  a_on, a_off = mixed_group_advantages(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps,
                                        cfg.reward_levels)
  on = (cfg.n_on / n) * fisher_matvec(pi, a_on)
  u = jnp.where(inst.data > 0, inst.data * a_off * shaping_weight(pi, cfg.shaping_gamma), 0.0)
  off = demo_apply(pi, u) / n
  return finish(inst, on + off + cfg.entropy_coef * entropy_grad(pi, log_pi))


def luffy_estimate(inst, theta, theta_old, cfg: LUFFYConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  n = cfg.n_on + 1

  def row(p, p_old, r, idx, demo):
    adv_on, adv_off = mixed_group_sample(p, p_old, r, idx, demo, cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    on = jnp.sum((adv_on * ratio)[:, None] * score(p, idx), axis=0)
    off = adv_off * shaping_weight(p[demo], cfg.shaping_gamma) * score(p, demo[None])[0]
    return (on + off) / n

  g = jax.vmap(row)(pi, pi_old, inst.reward, draws.on, draws.demo)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


LUFFY = Recipe("luffy", LUFFYConfig(), luffy_field, luffy_estimate, lambda cfg: cfg.n_on,
               "mixed group; demo: π_ref ≡ 1, shaping f = π/(π + γ)", prepare=fill_reward_levels)

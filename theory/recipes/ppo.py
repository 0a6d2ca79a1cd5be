r"""PPO-clip in bandit form: Â = r − V_old(x) with the exact value, K inner steps on one batch.

The exact surrogate gradient is −Σ_y 1_stable(y) Â(y) ∇π_θ(y) with the clip mask of Rule 3.

References: Schulman et al., arXiv 1707.06347; fusion-methods.md Rule 3.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec
from .base import Recipe, finish, policy
from .groups import clip_weight, value
from .sampling import Draws, score

__all__ = ["PPOClipConfig", "ppo_field", "ppo_estimate", "PPO_CLIP"]


@dataclasses.dataclass(frozen=True)
class PPOClipConfig:
  """PPO-clip, bandit form: Â = r − V_old(x) with the exact value, K inner steps on one batch."""
  clip_low: float = 0.2
  clip_high: float = 0.2
  inner_steps: int = 4
  samples: int = 1           # responses per prompt in one estimator call
  entropy_coef: float = 0.0


def ppo_field(inst, theta, theta_old, cfg: PPOClipConfig):
  log_pi, pi = policy(inst, theta)
  log_old, pi_old = policy(inst, theta_old)
  adv = inst.reward - value(pi_old, inst.reward)
  ratio = jnp.exp(jnp.where(pi > 0, log_pi - log_old, 0.0))
  b = clip_weight(jnp.maximum(adv, 0.0), jnp.maximum(-adv, 0.0), ratio, cfg.clip_low,
                   cfg.clip_high)
  g = fisher_matvec(pi, b) + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def ppo_estimate(inst, theta, theta_old, cfg: PPOClipConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  baseline = value(pi_old, inst.reward)[:, 0]

  def row(p, p_old, r, v, idx):
    adv = r[idx] - v
    ratio = p[idx] / p_old[idx]
    stable = ~(((adv > 0) & (ratio > 1.0 + cfg.clip_high))
               | ((adv < 0) & (ratio < 1.0 - cfg.clip_low)))
    return jnp.mean((jnp.where(stable, adv, 0.0) * ratio)[:, None] * score(p, idx), axis=0)

  g = jax.vmap(row)(pi, pi_old, inst.reward, baseline, draws.on)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


PPO_CLIP = Recipe("ppo_clip", PPOClipConfig(), ppo_field, ppo_estimate, lambda cfg: cfg.samples,
                  "π_ref = π_old, 1_clip, Â = r − V_old, K inner steps",
                  inner_steps=lambda cfg: cfg.inner_steps)

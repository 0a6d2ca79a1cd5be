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
from .options import require_finite, require_int, require_positive
from .sampling import Draws, score

__all__ = ["PPOClipConfig", "ppo_field", "ppo_estimate", "PPO_CLIP"]


@dataclasses.dataclass(frozen=True)
class PPOClipConfig:
  """PPO-clip, bandit form: Â = r − V_old(x) with the exact value, K inner steps on one batch.

  Attributes:
    clip_low, clip_high: ε_lo, ε_hi > 0 (Schulman et al.: 0.2).
    inner_steps: K ≥ 1 optimiser steps per rollout batch.
    samples: responses per prompt in one estimator call (≥ 1).
    entropy_coef: entropy bonus (finite).
  """
  clip_low: float = 0.2
  clip_high: float = 0.2
  inner_steps: int = 4
  samples: int = 1
  entropy_coef: float = 0.0

  def __post_init__(self):
    require_positive(self, "clip_low")
    require_positive(self, "clip_high")
    require_int(self, "inner_steps", 1)
    require_int(self, "samples", 1)
    require_finite(self, "entropy_coef")


def ppo_field(inst, theta, theta_old, cfg: PPOClipConfig):
  r"""Exact PPO-clip field: w_x F_π b with b = clip_weight(Â⁺, Â⁻, π/π_old), Â = r − V_old.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> ppo_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), PPOClipConfig()).tolist()
    [[-0.25, 0.25]]
  """
  log_pi, pi = policy(inst, theta)
  log_old, pi_old = policy(inst, theta_old)
  adv = inst.reward - value(pi_old, inst.reward)
  ratio = jnp.exp(jnp.where(pi > 0, log_pi - log_old, 0.0))
  b = clip_weight(jnp.maximum(adv, 0.0), jnp.maximum(-adv, 0.0), ratio, cfg.clip_low,
                   cfg.clip_high)
  g = fisher_matvec(pi, b) + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def ppo_estimate(inst, theta, theta_old, cfg: PPOClipConfig, draws: Draws):
  r"""Sampled PPO-clip gradient: mean over y_i ∼ π_old of 1_stable Â_i (π/π_old)(y_i)(e_{y_i} − π).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> ppo_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), PPOClipConfig(),
    ...              Draws(on=jnp.array([[1]]), demo=jnp.array([0]))).tolist()
    [[-0.25, 0.25]]
  """
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

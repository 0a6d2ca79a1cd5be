r"""ReLIFT (Ma et al., arXiv 2506.07527): Dr.GRPO-style RL plus a buffer of all-failed prompts.

Prompts whose n rollouts all fail go to a buffer; when it holds ``buffer_size`` items an SFT step
is taken on them. The exact field is the RL step plus the amortised SFT drift
(B/S) w_x (1 − p)^n (d − π); the trainer runs the buffer itself through the state hook
(:func:`relift_init`, :func:`relift_update`: a deterministic mass surrogate).

References: fusion-methods.md §6 (TheRoadQaQ/ReLIFT, relift/trainer.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec, rl_support
from .base import Recipe, finish, policy
from .groups import (
  binomial_gate_probability,
  enumerated_advantage,
  fill_reward_levels,
  resolve_levels,
  sample_group_advantage,
  success,
  success_stats,
  value,
)
from .sampling import Draws, score

__all__ = ["ReLIFTConfig", "relift_field", "relift_rl_field", "relift_estimate", "relift_init",
           "relift_update", "RELIFT"]


@dataclasses.dataclass(frozen=True)
class ReLIFTConfig:
  """ReLIFT: Dr.GRPO-style RL; prompts whose n rollouts all fail go to a buffer; SFT when full.

  Defaults (TheRoadQaQ/ReLIFT examples/*/train.sh): n = 8, no std, no clip, entropy 0.001,
  batch 128 prompts, buffer (sft_data_size) 128, SFT lr = RL lr (ratio 1), SFT entropy 0.001.
  The exact field is the RL step plus the amortised SFT drift (B/S) w_x (1−p)^n (d − π);
  ``train_recipe`` runs the buffer itself (deterministic mass surrogate, periodic SFT steps).
  """
  n_rollouts: int = 8
  use_std: bool = False
  eps: float = 1e-6
  rl_coef: float = 1.0
  entropy_coef: float = 0.001
  batch_prompts: int = 128
  buffer_size: int = 128
  sft_lr_ratio: float = 1.0
  sft_entropy_coef: float = 0.001
  success_threshold: float = 0.0
  reward_levels: int | None = None


def relift_rl_field(inst, theta, theta_old, cfg: ReLIFTConfig):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  n = cfg.n_rollouts
  if cfg.use_std:
    m = resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = enumerated_advantage(inst, pi_old, n - 1, m, True, cfg.eps, 0.0)
    b = a_pos - a_neg
  else:
    b = (1.0 - 1.0 / n) * (inst.reward - value(pi_old, inst.reward))
  g = cfg.rl_coef * fisher_matvec(pi, b) + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def relift_sft_direction(inst, pi, log_pi, cfg: ReLIFTConfig):
  """[X, Y] per-item SFT ascent direction (d − π) + sft entropy bonus (no prompt weight)."""
  return (inst.data - pi) + cfg.sft_entropy_coef * entropy_grad(pi, log_pi)


def relift_inflow(inst, pi_old, cfg: ReLIFTConfig):
  """[X] expected buffer items per step: B w_x (1 − p_x)^n (all n rollouts fail)."""
  p = success_stats(inst, pi_old, cfg.success_threshold)[0]
  return cfg.batch_prompts * inst.prompt_weights * binomial_gate_probability(
      p, cfg.n_rollouts, 0, 0)


def relift_field(inst, theta, theta_old, cfg: ReLIFTConfig):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  rate = cfg.sft_lr_ratio * relift_inflow(inst, pi_old, cfg) / cfg.buffer_size
  sft = jnp.where(rl_support(inst), rate[:, None] * relift_sft_direction(inst, pi, log_pi,
                                                                               cfg), 0.0)
  return relift_rl_field(inst, theta, theta_old, cfg) + sft


def relift_estimate(inst, theta, theta_old, cfg: ReLIFTConfig, draws: Draws):
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  succ = success(inst, cfg.success_threshold)

  def row(p, lp, p_old, r, s, idx, demo):
    adv = sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    rl = cfg.rl_coef * jnp.mean((adv * ratio)[:, None] * score(p, idx), axis=0)
    all_fail = ~jnp.any(s[idx])
    item = score(p, demo[None])[0] + cfg.sft_entropy_coef * entropy_grad(p, lp)
    scale = cfg.sft_lr_ratio * cfg.batch_prompts / cfg.buffer_size
    return rl, jnp.where(all_fail, scale * item, 0.0)

  rl, sft = jax.vmap(row)(pi, log_pi, pi_old, inst.reward, succ, draws.on, draws.demo)
  g = rl + cfg.entropy_coef * entropy_grad(pi, log_pi) + sft
  return finish(inst, g)


def relift_init(inst, theta, cfg: ReLIFTConfig) -> jax.Array:
  """The buffer state: [X] expected buffered items per prompt (empty at the start)."""
  del cfg
  return jnp.zeros(inst.data.shape[0], theta.dtype)


def relift_update(inst, theta_old, theta, mass, lr, cfg: ReLIFTConfig):
  """After an outer step: all-failed prompts enter the buffer; when full, one SFT step on it.

  The expected inflow B w_x (1 − p_x)^n (p_x under the rollout policy θ_old) accumulates; when the
  total reaches the buffer size an SFT step with learning rate lr · sft_lr_ratio is taken on the
  buffered mass, which is consumed.
  """
  _, pi_old = policy(inst, theta_old)
  mass = mass + relift_inflow(inst, pi_old, cfg)
  total = jnp.sum(mass)
  fire = total >= cfg.buffer_size
  log_pi, pi = policy(inst, theta)
  share = jnp.where(fire, mass / jnp.where(fire, total, 1.0), 0.0)
  sft = jnp.where(rl_support(inst), share[:, None] * relift_sft_direction(inst, pi, log_pi, cfg),
                  0.0)
  theta = theta + lr * cfg.sft_lr_ratio * sft
  mass = jnp.where(fire, mass * (1.0 - cfg.buffer_size / jnp.where(fire, total, 1.0)), mass)
  return theta, mass


RELIFT = Recipe("relift", ReLIFTConfig(), relift_field, relift_estimate,
                lambda cfg: cfg.n_rollouts,
                "Dr.GRPO RL + buffer of all-failed prompts with periodic SFT",
                step_field=relift_rl_field, init=relift_init, update=relift_update,
                prepare=fill_reward_levels)

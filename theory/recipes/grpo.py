r"""GRPO and Dr.GRPO: group-normalised advantages, a clipped ratio and a KL term.

GRPO (Shao et al., arXiv 2402.03300 §4.1): Â_i = (r_i − mean)/(std + ε) over a group of G on-policy
samples (verl ``compute_grpo_outcome_advantage``: unbiased std, ε = 1e-6, a group of one has mean 0
and std 1), the PPO clip on the ratio, and the k3 KL loss (verl ``kl_penalty(..., "low_var_kl")``,
clamped). Dr.GRPO (Liu et al., arXiv 2503.20783): no std, no length normaliser, no KL:
g = (1 − 1/G) F_π (r − V). With one inner step per batch θ = θ_old, the ratio is 1 and the clip is
inert (fusion-methods.md Rule 3), in the exact field and the estimator.

Exact field (one prompt, ascent):

.. math:: g = F_\pi b - c_{KL}\, \nabla KL + c_H \nabla H, \qquad
          b(y) = \mathbb{E}[\hat A\, 1_{stable} \mid y]

References: fusion-methods.md §3; verl ``verl/trainer/ppo/core_algos.py``.
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
  mean_group_advantage,
  resolve_levels,
  sample_group_advantage,
)
from .kl import KL_FORMS, kl_estimate_row, kl_field
from .options import require_bool, require_choice, require_finite, require_int, require_positive
from .sampling import Draws, score

__all__ = ["GroupPGConfig", "group_pg_field", "group_pg_estimate", "GRPO", "GRPO_REVERSE_KL",
           "DR_GRPO"]


@dataclasses.dataclass(frozen=True)
class GroupPGConfig:
  """GRPO / Dr.GRPO: group-normalised advantage, clipped ratio, KL term.

  Defaults (GRPO): group of 8 (rollout.n of the fusion repos' GRPO runs; DeepSeekMath used 64),
  std normalisation (unbiased, eps 1e-6, as verl), clip ε = 0.2, one inner step, k3 KL loss with
  verl's clamps and coefficient 0.04 (DeepSeekMath; [UNCONFIRMED] in fusion-methods.md). The clip
  is applied only when inner_steps > 1: with one step per batch θ = θ_old, the ratio is 1 and the
  clip is inert (fusion-methods.md Rule 3), in the exact field and in the estimator alike.

  Attributes:
    group_size: G ≥ 1 on-policy samples per prompt (G = 1: Â = r, verl's rule).
    use_std: divide by the group std (unbiased) plus eps.
    eps: std offset (> 0).
    clip_low, clip_high: ε_lo, ε_hi > 0 of the clip range [1 − ε_lo, 1 + ε_hi].
    inner_steps: optimiser steps per rollout batch (≥ 1).
    kl_coef: KL coefficient (finite).
    kl_form: one of KL_FORMS: ``k3_loss`` (verl's clamped low_var_kl as a loss: forward KL where
      unclamped), ``k3_loss_unclamped``, ``reverse`` (the intended KL(π‖ρ)), ``none``.
    entropy_coef: entropy bonus (finite).
    reward_levels: distinct rewards per prompt (None: read from the instance).
  """
  group_size: int = 8
  use_std: bool = True
  eps: float = 1e-6
  clip_low: float = 0.2
  clip_high: float = 0.2
  inner_steps: int = 1
  kl_coef: float = 0.04
  kl_form: str = "k3_loss"
  entropy_coef: float = 0.0
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "group_size", 1)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_positive(self, "clip_low")
    require_positive(self, "clip_high")
    require_int(self, "inner_steps", 1)
    require_finite(self, "kl_coef")
    require_choice(self, "kl_form", KL_FORMS)
    require_finite(self, "entropy_coef")
    require_int(self, "reward_levels", 1, optional=True)


def group_pg_field(inst, theta, theta_old, cfg: GroupPGConfig):
  r"""Exact expected ascent field of GRPO / Dr.GRPO at θ with rollouts from θ_old.

  .. math:: g_x = w_x\big[F_\pi b - c_{KL}\,\nabla KL + c_H \nabla H\big], \quad
            b(y) = \mathbb{E}[\hat A^+ \mid y] 1\{\text{ratio} \le 1+\varepsilon_{hi}\}
                 - \mathbb{E}[\hat A^- \mid y] 1\{\text{ratio} \ge 1-\varepsilon_{lo}\}

  (the clip only with inner_steps > 1); without std and clip b = (1 − 1/G)(r − V_old) (b = r for
  G = 1). The group expectation is enumerated over the multisets of reward levels.

  Args:
    inst: instance; theta, theta_old: [X, Y] logits; cfg: the config.

  Returns:
    [X, Y] ascent direction (0 off the RL support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> cfg = GroupPGConfig(group_size=4, use_std=False, kl_form="none")
    >>> group_pg_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg).tolist()  # (3/4) F_π r
    [[-0.1875, 0.1875]]
  """
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
    b = mean_group_advantage(inst, pi_old, cfg.group_size)
  g = fisher_matvec(pi, b)
  g = g - cfg.kl_coef * kl_field(pi, log_pi, pi_old, inst.reference, cfg.kl_form)
  g = g + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def group_pg_estimate(inst, theta, theta_old, cfg: GroupPGConfig, draws: Draws):
  r"""The sampled GRPO / Dr.GRPO gradient on one group per prompt (draws.on, [X, G]).

  .. math:: \hat g_x = \frac{1}{G}\sum_i 1_{stable,i}\, \hat A_i\, \frac{\pi(y_i)}{\pi_{old}(y_i)}
            (e_{y_i} - \pi) - c_{KL}\, \widehat{\nabla KL} + c_H \nabla H

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> draws = Draws(on=jnp.array([[0, 1]]), demo=jnp.array([0]))
    >>> cfg = GroupPGConfig(group_size=2, use_std=False, kl_form="none")
    >>> group_pg_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg, draws).tolist()
    [[-0.25, 0.25]]
  """
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
              "π_ref = π_old, clip, Â = (r − mean)/std over G, k3 KL loss (clamped; forward KL)",
              inner_steps=_inner, prepare=fill_reward_levels)
GRPO_REVERSE_KL = dataclasses.replace(GRPO, name="grpo_reverse_kl",
                                      config=GroupPGConfig(kl_form="reverse"),
                                      summary="GRPO with the intended reverse KL(π‖ρ) gradient")
DR_GRPO = dataclasses.replace(
    GRPO, name="dr_grpo", config=GroupPGConfig(use_std=False, kl_coef=0.0, kl_form="none"),
    summary="π_ref = π_old, clip, Â = r − mean over G: g = (1 − 1/G) F_π (r − V)")

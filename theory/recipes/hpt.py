r"""HPT (Lv et al., arXiv 2509.04419, Algorithm 1): SFT iff K ≤ γ of n rollouts succeed, else RL.

The released code (TsinghuaC3I/Unify-Post-Training, ``mix_trainer.py::select_on_off_ada_balance``
with ``unify_strategy="switch"``; ``exp_scripts/train.sh``) drops the n on-policy samples and adds
the demonstration when K ≤ ``switch_gate``, and keeps the n samples otherwise. Its RL loss is
Dr.GRPO-style (``grpo_use_std=False``: Â = r − mean_n r), unclipped (``loss_remove_clip``) and
aggregated as Σ_tokens(−Â·ratio)/L_max (``loss_remove_token_mean``): for atomic responses
(fusion-methods.md Rule 4) that is a *sum* over the group's n samples. The SFT term is
``sft_loss_coef`` times the NLL of the demonstration; an entropy bonus 0.001·H is added.

Exact field (one prompt, ascent), K ∼ Bin(n, p_old):

.. math:: g = c_{sft} \Pr(K \le \gamma)\,(d - \pi) + c_{rl}\, a\, F_\pi b + c_H \nabla H,
          \qquad b(y) = \mathbb{E}[\hat A\, 1\{K > \gamma\} \mid y]

with a = n (group sum, default) or 1 (group mean). The deterministic gate "SFT iff p ≤ γ/n" is
not used (a modelling choice fusion-methods.md §2 mentions, not the paper's).

References: fusion-methods.md §2 and Rules 4-5.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec
from .aggregation import RL_AGGREGATIONS, group_scale
from .base import Recipe, finish, policy
from .binomial import binomial_gate_probability
from .groups import (
  enumerated_advantage,
  fill_reward_levels,
  gated_mean_advantage,
  resolve_levels,
  sample_group_advantage,
  success,
  success_stats,
)
from .options import require_bool, require_choice, require_finite, require_int, require_positive
from .sampling import Draws, score

__all__ = ["HPTConfig", "hpt_field", "hpt_estimate", "HPT"]

@dataclasses.dataclass(frozen=True)
class HPTConfig:
  """HPT (switch): SFT iff K ≤ γ correct of n rollouts, else Dr.GRPO-style RL on the n rollouts.

  Defaults (Unify-Post-Training ``exp_scripts/train.sh``, Qwen2.5-Math-7B): n = 8, γ = 0
  (Llama-3.1-8B: 2), sft_loss_coef 1.0, grpo_use_std False, no clip, entropy 0.001, RL loss summed
  over the group (``loss_remove_token_mean=True``).

  Attributes:
    n_rollouts: n ≥ 1 rollouts scored per prompt (n = 1: Â = r, verl's rule).
    switch_gate: γ in [0, n]: SFT iff K ≤ γ (γ = n: always SFT).
    sft_coef, rl_coef: coefficients of the SFT and RL terms (finite).
    use_std: std normalisation of the RL advantage.
    eps: std offset (> 0).
    entropy_coef: entropy bonus (finite).
    success_threshold: a rollout is correct iff r > threshold (finite).
    rl_aggregation: ``group_sum`` (published: Σ/L_max) or ``group_mean``.
    reward_levels: distinct rewards per prompt (None: read from the instance).
  """
  n_rollouts: int = 8
  switch_gate: int = 0
  sft_coef: float = 1.0
  rl_coef: float = 1.0
  use_std: bool = False
  eps: float = 1e-6
  entropy_coef: float = 0.001
  success_threshold: float = 0.0
  rl_aggregation: str = "group_sum"
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_rollouts", 1)
    require_int(self, "switch_gate", 0, self.n_rollouts)
    require_finite(self, "sft_coef")
    require_finite(self, "rl_coef")
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_finite(self, "entropy_coef")
    require_finite(self, "success_threshold")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)
    require_int(self, "reward_levels", 1, optional=True)


def hpt_field(inst, theta, theta_old, cfg: HPTConfig):
  r"""Exact expected ascent field of HPT: gated SFT plus gated group RL (see the module formula).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = HPTConfig(n_rollouts=1, entropy_coef=0.0)
    >>> hpt_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg).tolist()
    [[-0.5, 0.5]]
  """
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
  rl = cfg.rl_coef * group_scale(cfg.rl_aggregation, n) * fisher_matvec(pi, b)
  g = (cfg.sft_coef * sft_weight * (inst.data - pi) + rl
       + cfg.entropy_coef * entropy_grad(pi, log_pi))
  return finish(inst, g)


def hpt_estimate(inst, theta, theta_old, cfg: HPTConfig, draws: Draws):
  r"""The sampled HPT gradient: K = successes among draws.on; SFT on draws.demo iff K ≤ γ, else

  .. math:: c_{rl}\, a \cdot \frac{1}{n} \sum_i \hat A_i \frac{\pi(y_i)}{\pi_{old}(y_i)}
            (e_{y_i} - \pi)

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = HPTConfig(n_rollouts=1, entropy_coef=0.0)
    >>> hpt_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg,
    ...              Draws(on=jnp.array([[0]]), demo=jnp.array([1]))).tolist()  # K = 0: SFT
    [[-0.5, 0.5]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  succ = success(inst, cfg.success_threshold)
  scale = cfg.rl_coef * group_scale(cfg.rl_aggregation, cfg.n_rollouts)

  def row(p, p_old, r, s, idx, demo):
    k = jnp.sum(s[idx])
    adv = sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    rl = jnp.mean((adv * ratio)[:, None] * score(p, idx), axis=0)
    sft = score(p, demo[None])[0]
    return jnp.where(k <= cfg.switch_gate, cfg.sft_coef * sft, scale * rl)

  g = jax.vmap(row)(pi, pi_old, inst.reward, succ, draws.on, draws.demo)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


HPT = Recipe("hpt", HPTConfig(), hpt_field, hpt_estimate, lambda cfg: cfg.n_rollouts,
             "gate K ≤ γ of n: SFT (π_ref = π_θ) else RL (π_ref = π_old, Â = r − mean, Σ over n)",
             prepare=fill_reward_levels)

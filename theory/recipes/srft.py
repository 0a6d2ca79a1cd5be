r"""SRFT (Fu et al., arXiv 2506.19767): entropy-weighted SFT, demonstration RL and self RL.

L = L_SFT^demo + L_RL^demo + L_RL^self (fusion-methods.md §5):

- L_SFT^demo = 0.5 sg(e^{−H}) · (−log π(y*));
- L_RL^demo = −min(r Â_off, clip(r, 1 − ε, 1 + ε) Â_off) with behaviour probability 1, so the
  ratio is r = π(y*) (UPGE: π_ref ≡ 1), and Â_off normalised over G_on ∪ G_off with the std
  (UPGE table). The clip binds only for Â_off < 0 with π(y*) < 1 − ε (never for Â_off > 0, as
  π ≤ 1 < 1 + ε): there the sample gives no gradient;
- L_RL^self = 0.1 sg(e^{+H}) · (−log π(y⁺)) + log π(y⁻) on the on-policy samples (positives
  up-weighted, negatives pushed down with weight 1). The sign of H in the positive weight is
  [UNCONFIRMED] against the paper: the HPT re-implementation uses e^{+H} and so do we.

H is the entropy of π(·|x) (for atomic responses: the sequence-level entropy; the HPT
re-implementation uses the per-token mean). The official SRFT code was not available; the paper's
ε and aggregation are [UNCONFIRMED] (ε = 0.2, means over samples).

The HPT re-implementation (TsinghuaC3I/Unify-Post-Training ``mix_core_alg.py::
compute_token_on_off_policy_srft_loss``, ``exp_scripts/train_srft.sh``) differs: LUFFY's shaping
f(π) = π/(π + 0.1) on the demo term, no std, no clip, entropy 0.001 (:data:`SRFT_HPT`).

Exact field (one prompt, ascent):

.. math:: g = 0.5 e^{-H}(d - \pi) + \sum_{y^*} d(y^*)\, b_{off}(y^*)\, f'(\pi(y^*))\pi(y^*)\,
          (e_{y^*} - \pi) + F_\pi(0.1 e^{H} 1^+ - 1^-) + c_H \nabla H

with b_off = E[Â_off⁺ | y*] 1{π(y*) ≤ 1 + ε} − E[Â_off⁻ | y*] 1{π(y*) ≥ 1 − ε} with the clip,
E[Â_off | y*] without.

References: fusion-methods.md §5 and §11 (UPGE table: SRFT offline part).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, entropy_rows, fisher_matvec
from .base import Recipe, finish, policy
from .demonstrations import (
  demo_apply,
  mixed_group_sample,
  mixed_off_advantage,
  mixed_off_advantage_parts,
  shaping_weight,
)
from .groups import clip_weight, fill_reward_levels, success
from .options import require_bool, require_finite, require_int, require_positive
from .sampling import Draws, score

__all__ = ["SRFTConfig", "srft_field", "srft_estimate", "SRFT", "SRFT_HPT"]


@dataclasses.dataclass(frozen=True)
class SRFTConfig:
  """SRFT: entropy-weighted SFT (0.5 e^{−H}), demo RL (π_ref ≡ 1, clipped), self RL (0.1 e^{+H}).

  Defaults (the paper as read in fusion-methods.md §5): weights 0.5 and 0.1, mixed group of
  7 + 1 normalised with the std (unbiased, eps 1e-6), demo ratio π(y*) clipped with ε = 0.2
  ([UNCONFIRMED] value), no shaping, no entropy bonus.

  Attributes:
    n_on: on-policy samples per prompt (≥ 1; the demo's group has n_on + 1 members).
    sft_coef: weight of the SFT term before e^{−H} (finite).
    rl_pos_coef: weight of positive self samples before e^{+H} (finite).
    use_std: std normalisation of the mixed group.
    eps: std offset (> 0).
    demo_clip: ε > 0 of the clip on the demo ratio π(y*), or None (no clip).
    shaping_gamma: γ > 0 of LUFFY's f(π) = π/(π + γ) on the demo term, or None (f = π).
    entropy_coef: entropy bonus (finite).
    success_threshold: y is positive iff r > threshold (finite).
    reward_levels: distinct rewards per prompt (None: read from the instance).
  """
  n_on: int = 7
  sft_coef: float = 0.5
  rl_pos_coef: float = 0.1
  use_std: bool = True
  eps: float = 1e-6
  demo_clip: float | None = 0.2
  shaping_gamma: float | None = None
  entropy_coef: float = 0.0
  success_threshold: float = 0.0
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_on", 1)
    require_finite(self, "sft_coef")
    require_finite(self, "rl_pos_coef")
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_positive(self, "demo_clip", optional=True)
    require_positive(self, "shaping_gamma", optional=True)
    require_finite(self, "entropy_coef")
    require_finite(self, "success_threshold")
    require_int(self, "reward_levels", 1, optional=True)


def srft_field(inst, theta, theta_old, cfg: SRFTConfig):
  r"""Exact expected ascent field of SRFT (see the module formula).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> g = srft_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), SRFTConfig(n_on=1))
    >>> [round(v, 6) for v in g[0].tolist()]
    [-0.513388, 0.513388]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  h = entropy_rows(pi)[:, None]
  succ = success(inst, cfg.success_threshold).astype(pi.dtype)
  if cfg.demo_clip is None:
    b_off = mixed_off_advantage(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps, cfg.reward_levels)
  else:
    pos, neg = mixed_off_advantage_parts(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps,
                                         cfg.reward_levels)
    b_off = clip_weight(pos, neg, pi, cfg.demo_clip, cfg.demo_clip)
  sft = cfg.sft_coef * jnp.exp(-h) * (inst.data - pi)
  u = jnp.where(inst.data > 0, inst.data * b_off * shaping_weight(pi, cfg.shaping_gamma), 0.0)
  demo_rl = demo_apply(pi, u)
  self_rl = fisher_matvec(pi, cfg.rl_pos_coef * jnp.exp(h) * succ - (1.0 - succ))
  g = sft + demo_rl + self_rl + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def srft_estimate(inst, theta, theta_old, cfg: SRFTConfig, draws: Draws):
  r"""The sampled SRFT gradient on one mixed group per prompt:

  .. math:: 0.5 e^{-H} (e_{y^*} - \pi) + 1_{stable}\, \hat A_{off}\, f'(\pi(y^*))\pi(y^*)
            (e_{y^*} - \pi) + \frac{1}{n}\sum_i (0.1 e^H s_i - (1 - s_i))
            \frac{\pi(y_i)}{\pi_{old}(y_i)} (e_{y_i} - \pi) + c_H \nabla H

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> g = srft_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), SRFTConfig(n_on=1),
    ...                   Draws(on=jnp.array([[1]]), demo=jnp.array([1])))
    >>> [round(v, 6) for v in g[0].tolist()]
    [-0.225, 0.225]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  h = entropy_rows(pi)
  succ = success(inst, cfg.success_threshold).astype(pi.dtype)

  def row(p, p_old, r, s, hx, idx, demo):
    _, adv_off = mixed_group_sample(r, idx, demo, cfg.use_std, cfg.eps)
    if cfg.demo_clip is not None:
      ratio_demo = p[demo]
      stable = ~(((adv_off > 0) & (ratio_demo > 1.0 + cfg.demo_clip))
                 | ((adv_off < 0) & (ratio_demo < 1.0 - cfg.demo_clip)))
      adv_off = jnp.where(stable, adv_off, 0.0)
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
              "0.5 e^{−H} SFT + clipped demo RL (π_ref ≡ 1, std over G_on ∪ G_off) "
              "+ self RL (0.1 e^{H} on y⁺, −1 on y⁻)",
              prepare=fill_reward_levels)
SRFT_HPT = dataclasses.replace(
    SRFT, name="srft_hpt",
    config=SRFTConfig(use_std=False, demo_clip=None, shaping_gamma=0.1, entropy_coef=0.001),
    summary="SRFT as re-implemented in HPT's code: LUFFY shaping on the demo, no std, no clip")

r"""LUFFY (Yan et al., arXiv 2504.14945): a mixed group of on-policy samples and one demonstration.

The released script (ElliottYan/LUFFY ``exp_scripts/train.sh``; loss in
``luffy/verl/verl/mix_src/mix_core_alg.py::compute_token_on_off_policy_loss``) replaces one of 8
rollouts by the demonstration y* and computes the advantage over the mixed group with
``grpo_use_std=False``: Â = r − mean of the 8 rewards (the paper also divides by the std; set
``use_std=True``). On-policy samples contribute −Â·ratio (clip removed); the demonstration
contributes −Â·f(π(y*)) with the shaping f(π) = π/(π + γ), γ = 0.1, and behaviour probability 1
(``shaping_gamma=None``: no reshape, f = π). The loss is Σ_tokens/L_max
(``loss_remove_token_mean``): for atomic responses a *sum* over the group's samples
(fusion-methods.md Rule 4). Entropy bonus 0.001·H.

Exact field (one prompt, ascent), a = 1 (group sum) or 1/(n_on + 1) (group mean):

.. math:: g = a\Big[n_{on} F_\pi \bar A_{on}
          + \sum_{y^*} d(y^*)\, \bar A_{off}(y^*)\, f'(\pi(y^*))\pi(y^*)\,(e_{y^*} - \pi)\Big]
          + c_H \nabla H

with Ā_on(y) = E[Â | y] for an on-policy y and Ā_off(y*) = E[Â_off | y*] over the mixed group.
LUFFY shapes per token; applying f to the probability of an atomic response is the tabular
analogue (fusion-methods.md §4).

References: fusion-methods.md §4.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec
from .aggregation import RL_AGGREGATIONS, group_scale
from .base import Recipe, finish, policy
from .demonstrations import (
  demo_apply,
  mixed_group_sample,
  mixed_off_advantage,
  mixed_on_advantage,
  shaping_weight,
)
from .groups import fill_reward_levels
from .options import require_bool, require_choice, require_finite, require_int, require_positive
from .sampling import Draws, score

__all__ = ["LUFFYConfig", "luffy_field", "luffy_estimate", "LUFFY"]


@dataclasses.dataclass(frozen=True)
class LUFFYConfig:
  """LUFFY: mixed group (7 on-policy + 1 demonstration), shaping f(π) = π/(π + γ) on the demo.

  Defaults (ElliottYan/LUFFY ``exp_scripts/train.sh``): n_on 7, one full demonstration, γ = 0.1
  (``off_policy_reshape="p_div_p_0.1"``), grpo_use_std False, clip removed, entropy 0.001, loss
  summed over the group (``loss_remove_token_mean=True``).

  Attributes:
    n_on: on-policy samples per prompt (≥ 1; the group has n_on + 1 members).
    shaping_gamma: γ > 0 of f(π) = π/(π + γ), or None for no reshape (f = π).
    use_std: std normalisation over the mixed group (the paper's; the script has none).
    eps: std offset (> 0).
    entropy_coef: entropy bonus (finite).
    rl_aggregation: ``group_sum`` (published: Σ/L_max) or ``group_mean``.
    reward_levels: distinct rewards per prompt (None: read from the instance).
  """
  n_on: int = 7
  shaping_gamma: float | None = 0.1
  use_std: bool = False
  eps: float = 1e-6
  entropy_coef: float = 0.001
  rl_aggregation: str = "group_sum"
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_on", 1)
    require_positive(self, "shaping_gamma", optional=True)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_finite(self, "entropy_coef")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)
    require_int(self, "reward_levels", 1, optional=True)


def luffy_field(inst, theta, theta_old, cfg: LUFFYConfig):
  r"""Exact expected ascent field of LUFFY (see the module formula).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = LUFFYConfig(n_on=1, shaping_gamma=None, entropy_coef=0.0)
    >>> luffy_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg).tolist()
    [[-0.1875, 0.1875]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  a_on = mixed_on_advantage(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps, cfg.reward_levels)
  a_off = mixed_off_advantage(inst, pi_old, cfg.n_on, cfg.use_std, cfg.eps, cfg.reward_levels)
  on = cfg.n_on * fisher_matvec(pi, a_on)
  u = jnp.where(inst.data > 0, inst.data * a_off * shaping_weight(pi, cfg.shaping_gamma), 0.0)
  scale = group_scale(cfg.rl_aggregation, cfg.n_on + 1) / (cfg.n_on + 1)
  g = scale * (on + demo_apply(pi, u)) + cfg.entropy_coef * entropy_grad(pi, log_pi)
  return finish(inst, g)


def luffy_estimate(inst, theta, theta_old, cfg: LUFFYConfig, draws: Draws):
  r"""The sampled LUFFY gradient on one mixed group per prompt (draws.on [X, n_on], draws.demo):

  .. math:: a\Big[\sum_i \hat A_i \frac{\pi(y_i)}{\pi_{old}(y_i)} (e_{y_i} - \pi)
            + \hat A_{off}\, f'(\pi(y^*))\pi(y^*)\,(e_{y^*} - \pi)\Big] + c_H \nabla H

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = LUFFYConfig(n_on=1, shaping_gamma=None, entropy_coef=0.0)
    >>> luffy_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg,
    ...                Draws(on=jnp.array([[0]]), demo=jnp.array([1]))).tolist()
    [[-0.375, 0.375]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  scale = group_scale(cfg.rl_aggregation, cfg.n_on + 1) / (cfg.n_on + 1)

  def row(p, p_old, r, idx, demo):
    adv_on, adv_off = mixed_group_sample(r, idx, demo, cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    on = jnp.sum((adv_on * ratio)[:, None] * score(p, idx), axis=0)
    off = adv_off * shaping_weight(p[demo], cfg.shaping_gamma) * score(p, demo[None])[0]
    return scale * (on + off)

  g = jax.vmap(row)(pi, pi_old, inst.reward, draws.on, draws.demo)
  return finish(inst, g + cfg.entropy_coef * entropy_grad(pi, log_pi))


LUFFY = Recipe("luffy", LUFFYConfig(), luffy_field, luffy_estimate, lambda cfg: cfg.n_on,
               "mixed group Â = r − mean; demo: π_ref ≡ 1, shaping f = π/(π + γ); Σ over the group",
               prepare=fill_reward_levels)

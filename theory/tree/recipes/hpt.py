r"""HPT on trees (Lv et al., arXiv 2509.04419, Algorithm 1): per prompt, SFT iff K ≤ γ, else RL.

Per prompt n rollouts y_i ∼ π are scored; K = #{r(y_i) > threshold}. If K ≤ γ (``switch_gate``)
the rollouts are dropped and the demonstration y* ∼ d is trained with the token-sum NLL
(sft_coef Σ_t ∇ log π(y*_t|y*_<t); the code's token mean is a constant normaliser, THEORY.md G2);
otherwise Dr.GRPO-style RL on the n rollouts (Â = r − mean, no clip, Σ_tokens/L_max: a sum over
the group). Entropy bonus c_H on the rollouts' tokens. As the atomic :mod:`...recipes.hpt`.

Exact field (one prompt, ascent), K ∼ Bin(n, p), p = π(r > threshold):

.. math:: g = c_{sft}\Pr(K \le \gamma)\sum_{y^*} d(y^*)\sum_t (e_{y^*_t} - \pi_{y^*_{<t}})
          + c_{rl}\, a \sum_y \pi(y)\, b(y) \sum_t (e_{y_t} - \pi_{y_{<t}})
          + c_H \sum_s P_\pi(s)\nabla H_s,\qquad b(y) = \mathbb{E}[\hat A\,1\{K > \gamma\} \mid y]

(a = n for ``group_sum``, 1 for ``group_mean``; b from the atomic group sums on the leaf set).

References: fusion-methods.md §2 and Rule 5; TsinghuaC3I/Unify-Post-Training
``mix_trainer.py::select_on_off_ada_balance`` (``unify_strategy="switch"``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.binomial import binomial_gate_probability
from ...recipes.groups import (
  enumerated_advantage,
  gated_mean_advantage,
  sample_group_advantage,
  success_stats,
)
from ...recipes.options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_positive,
)
from ..atomic import leaf_instance
from ..fields import weighted
from ..instance import TreeInstance
from ..policy import Levels, policy_log_probs
from ..sampling import sample_leaves
from .base import TreeRecipe
from .continuations import fill_reward_levels, leaf_rewards, levels_for, sample_data
from .hints import (
  add_levels,
  entropy_field,
  leaf_data,
  leaf_edge_totals,
  leaf_paths,
  mean_over_calls,
  path_pullback,
  path_visits,
  policy_leaves,
  pullback_with_entropy,
  scale_levels,
)

__all__ = ["TreeHPTConfig", "tree_hpt_field", "tree_hpt_estimate", "TREE_HPT"]


@dataclasses.dataclass(frozen=True)
class TreeHPTConfig:
  """HPT (switch) on trees (defaults as the atomic :class:`~...recipes.hpt.HPTConfig`).

  Attributes:
    n_rollouts: n ≥ 1; switch_gate: γ in [0, n] (SFT iff K ≤ γ).
    sft_coef, rl_coef: coefficients (finite).
    use_std, eps: std normalisation of the RL advantage and its offset (> 0).
    entropy_coef: entropy bonus (finite).
    success_threshold: a rollout is correct iff r > threshold (finite).
    rl_aggregation: ``group_sum`` (published) or ``group_mean``.
    reward_levels: distinct rewards per prompt for the std enumeration (None: from the tree).
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


@compiled("cfg", prepare=fill_reward_levels)
def tree_hpt_field(tree: TreeInstance, theta: Levels, cfg: TreeHPTConfig) -> Levels:
  r"""Exact expected ascent field of HPT on a tree (module formula), prompt weights included.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeHPTConfig(n_rollouts=1, entropy_coef=0.0)
    >>> tree_hpt_field(tree, initial_logits(tree), cfg)[0].tolist()  # the atomic value
    [[[-0.5, 0.5]]]
  """
  log_pi, probs, reach, pi = policy_leaves(tree, theta)  # one exp pass: π and log π
  inst = leaf_instance(tree, support_only=True)
  n, gamma = cfg.n_rollouts, cfg.switch_gate
  p = success_stats(inst, pi, cfg.success_threshold)[0]
  sft_weight = binomial_gate_probability(p, n, 0, gamma)[:, None]
  if cfg.use_std:
    pos, neg = enumerated_advantage(inst, pi, n - 1, levels_for(tree, cfg.reward_levels), True,
                                    cfg.eps, cfg.success_threshold, gate=(gamma + 1, n))
    b = pos - neg
  else:
    b = gated_mean_advantage(inst, pi, n, gamma + 1, cfg.success_threshold)
  rl_scale = cfg.rl_coef * group_scale(cfg.rl_aggregation, n)
  per_leaf = cfg.sft_coef * sft_weight * leaf_data(tree) + rl_scale * pi * b
  # the coefficient is constant along each path; the entropy bonus joins the same pullback
  return weighted(tree, pullback_with_entropy(tree, log_pi, probs, leaf_edge_totals(tree, per_leaf),
                                              cfg.entropy_coef * reach))


@compiled("cfg", "n", prepare=fill_reward_levels)
def tree_hpt_estimate(tree: TreeInstance, theta: Levels, cfg: TreeHPTConfig, key: jax.Array,
                      n: int) -> Levels:
  r"""Mean of n sampled HPT gradients: per prompt K of the n rollouts; K ≤ γ: c_sft Σ_t
  ∇log π(y*_t|·); else c_rl a (1/n) Σ_i Â_i Σ_t ∇log π(y_{i,t}|·); plus the rollouts' entropy.

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeHPTConfig(n_rollouts=1, entropy_coef=0.0)
    >>> g = tree_hpt_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4)
    >>> [round(v, 6) for v in g[0][0, 0].tolist()]  # mean of 4 sampled gradients
    [-0.5, 0.5]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  t_max = paths.node.shape[-1]
  rl_scale = cfg.rl_coef * group_scale(cfg.rl_aggregation, cfg.n_rollouts)

  def one_call(k):
    k_on, k_demo = jax.random.split(k)
    idx = sample_leaves(tree, log_pi, k_on, cfg.n_rollouts)
    demo = sample_data(k_demo, tree, 1)
    r = jnp.take_along_axis(rewards, idx, axis=1)
    sft = (jnp.sum(r > cfg.success_threshold, axis=1) <= cfg.switch_gate)[:, None]
    adv = jax.vmap(lambda v: sample_group_advantage(v, cfg.use_std, cfg.eps))(r)
    coef_on = jnp.where(sft, 0.0, rl_scale * adv / cfg.n_rollouts)
    coef_demo = jnp.where(sft, cfg.sft_coef, 0.0)
    coef = jnp.concatenate([coef_on, coef_demo], axis=1)
    g = path_pullback(tree, log_pi, paths, jnp.concatenate([idx, demo], axis=1),
                      jnp.broadcast_to(coef[..., None], coef.shape + (t_max,)))
    visits = path_visits(tree, paths, idx, jnp.ones(idx.shape + (t_max,)) / cfg.n_rollouts)
    return weighted(tree, add_levels(g, scale_levels(cfg.entropy_coef,
                                                     entropy_field(tree, log_pi, visits))))

  return mean_over_calls(one_call, key, n)


TREE_HPT = TreeRecipe(
    "hpt", TreeHPTConfig(), tree_hpt_field, tree_hpt_estimate,
    "gate K ≤ γ of n: token-sum SFT on y* ∼ d, else Dr.GRPO RL on the n rollouts (Σ over n)",
    "Lv et al. arXiv 2509.04419 Alg. 1; Unify-Post-Training mix_trainer.py::"
    "select_on_off_ada_balance (fusion-methods.md §2)",
    prepare=fill_reward_levels)

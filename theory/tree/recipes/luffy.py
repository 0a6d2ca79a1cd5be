r"""LUFFY on trees (Yan et al., arXiv 2504.14945): a mixed group, per-token policy shaping.

One prompt's group is n_on on-policy responses y_i ∼ π and one demonstration y* ∼ d; the
advantage is computed over the mixed group (released script: ``grpo_use_std=False``,
Â = r − mean of the n_on + 1 rewards; the paper divides by the std: ``use_std=True``). On-policy
tokens contribute Â_i ∇ log π(y_{i,t}|y_{i,<t}) (ratio 1 at the rollout policy, clip removed); every
demonstration token contributes Â_off ∇ f(π(y*_t|y*_<t)) with the shaping f(p) = p/(p + γ), γ = 0.1
(behaviour probability 1), i.e. Â_off φ(π_t)(e_{y*_t} − π(·|y*_<t)) with φ(p) = f′(p)p = γp/(p + γ)²
(``shaping_gamma=None``: f = p, φ = p). The loss is Σ_tokens/L_max: a sum over the group's samples
and tokens (``rl_aggregation``); entropy bonus c_H Σ_t H(π(·|y_<t)) over the on-policy responses.

Exact field (one prompt, ascent; a = 1 for ``group_sum``, 1/(n_on + 1) for ``group_mean``):

.. math:: g = a\Big[n_{on}\sum_y \pi(y)\bar A_{on}(y)\sum_t (e_{y_t} - \pi_{y_{<t}})
          + \sum_{y^*} d(y^*)\bar A_{off}(y^*)\sum_t \varphi(\pi(y^*_t|y^*_{<t}))
          (e_{y^*_t} - \pi_{y^*_{<t}})\Big] + c_H \sum_s P_\pi(s)\nabla H_s

with Ā_on(y) = E[Â | y] and Ā_off(y*) = E[Â_off | y*] over the mixed group, taken from the atomic
recipes' enumerations on the leaf set (:func:`~...recipes.demonstrations.mixed_on_advantage`). At
depth 1 this is the atomic LUFFY field (at θ_old = θ); at depth ≥ 2 the shaping acts per token,
not on the sequence probability (fusion-methods.md §4(b), Rule 4).

References: fusion-methods.md §4; ElliottYan/LUFFY ``mix_core_alg.py::
compute_token_on_off_policy_loss``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.demonstrations import (
  mixed_group_sample,
  mixed_off_advantage,
  mixed_on_advantage,
  shaping_weight,
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
  edge_log_probs,
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

__all__ = ["TreeLUFFYConfig", "tree_luffy_field", "tree_luffy_estimate", "TREE_LUFFY",
           "luffy_scale", "mixed_advantages"]


@dataclasses.dataclass(frozen=True)
class TreeLUFFYConfig:
  """LUFFY on trees: 7 on-policy + 1 demonstration, per-token shaping f(p) = p/(p + γ).

  Defaults as the atomic :class:`~...recipes.luffy.LUFFYConfig` (ElliottYan/LUFFY
  ``exp_scripts/train.sh``).

  Attributes:
    n_on: on-policy samples per prompt (≥ 1).
    shaping_gamma: γ > 0, or None (no reshape: f = p).
    use_std: std normalisation over the mixed group; eps: its offset (> 0).
    entropy_coef: entropy bonus (finite).
    rl_aggregation: ``group_sum`` (published) or ``group_mean``.
    reward_levels: distinct rewards per prompt for the std enumeration (None: from the tree).
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


def luffy_scale(cfg) -> float:
  """a = group_scale(aggregation, n_on + 1)/(n_on + 1): 1 for a sum over the group.

  Examples:
    >>> luffy_scale(TreeLUFFYConfig())  # group_sum
    1.0
    >>> luffy_scale(TreeLUFFYConfig(rl_aggregation="group_mean"))  # 1/(7 + 1)
    0.125
  """
  return group_scale(cfg.rl_aggregation, cfg.n_on + 1) / (cfg.n_on + 1)


def mixed_advantages(tree: TreeInstance, pi: jax.Array, cfg):
  """(Ā_on, Ā_off), each [X, S] on the flat leaf axis, of the mixed group (atomic enumerations),
  for the leaf probabilities π(y) [X, S].

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> import jax.numpy as jnp
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeLUFFYConfig(n_on=1)
    >>> a_on, a_off = mixed_advantages(tree, jnp.array([[0.5, 0.5]]), cfg)
    >>> a_on.tolist(), a_off.tolist()  # leaves (EOS: r = 0, token 1: r = 1)
    ([[-0.5, 0.0]], [[-0.25, 0.25]])
  """
  inst = leaf_instance(tree, support_only=True)
  m = levels_for(tree, cfg.reward_levels) if cfg.use_std else None
  a_on = mixed_on_advantage(inst, pi, cfg.n_on, cfg.use_std, cfg.eps, m)
  a_off = mixed_off_advantage(inst, pi, cfg.n_on, cfg.use_std, cfg.eps, m, on_support=True)
  return a_on, a_off


@compiled("cfg", prepare=fill_reward_levels)
def tree_luffy_field(tree: TreeInstance, theta: Levels, cfg: TreeLUFFYConfig) -> Levels:
  r"""Exact expected ascent field of LUFFY on a tree (module formula), prompt weights included.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeLUFFYConfig(n_on=1, shaping_gamma=None, entropy_coef=0.0)
    >>> tree_luffy_field(tree, initial_logits(tree), cfg)[0].tolist()  # the atomic value
    [[[-0.1875, 0.1875]]]
  """
  log_pi, probs, reach, pi = policy_leaves(tree, theta)  # one exp pass: π and log π
  a_on, a_off = mixed_advantages(tree, pi, cfg)
  # Level by level: the on-policy coefficient is constant along a path, the demonstration's is
  # (per leaf) × (the shaping weight of each edge's π(a|s)), so both are subtree totals per edge.
  on = leaf_edge_totals(tree, cfg.n_on * pi * a_on)
  demo = leaf_edge_totals(tree, leaf_data(tree) * a_off)
  rl = tuple(o + shaping_weight(p, cfg.shaping_gamma) * dm for o, dm, p in zip(on, demo, probs))
  return weighted(tree, pullback_with_entropy(tree, log_pi, probs,
                                              scale_levels(luffy_scale(cfg), rl),
                                              cfg.entropy_coef * reach))


@compiled("cfg", "n", prepare=fill_reward_levels)
def tree_luffy_estimate(tree: TreeInstance, theta: Levels, cfg: TreeLUFFYConfig, key: jax.Array,
                        n: int) -> Levels:
  r"""Mean of n sampled LUFFY gradients, each on one mixed group per prompt:

  .. math:: a\Big[\sum_i \hat A_i \sum_t \nabla\log\pi(y_{i,t}|y_{i,<t})
            + \hat A_{off}\sum_t \nabla f(\pi(y^*_t|y^*_{<t}))\Big]
            + \frac{c_H}{n_{on}}\sum_i\sum_t \nabla H(\pi(\cdot|y_{i,<t}))

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeLUFFYConfig(n_on=1, shaping_gamma=None, entropy_coef=0.0)
    >>> g = tree_luffy_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4)
    >>> [round(v, 6) for v in g[0][0, 0].tolist()]  # mean of 4 sampled mixed groups
    [-0.28125, 0.28125]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  p_edge = jnp.exp(edge_log_probs(tree, log_pi, paths))
  t_max = paths.node.shape[-1]

  def one_call(k):
    k_on, k_demo = jax.random.split(k)
    idx = sample_leaves(tree, log_pi, k_on, cfg.n_on)                     # [X, n_on]
    demo = sample_data(k_demo, tree, 1)                                    # [X, 1]
    adv_on, adv_off = jax.vmap(lambda r, i, d: mixed_group_sample(
        r, i, d[0], cfg.use_std, cfg.eps))(rewards, idx, demo)
    demo_edges = jnp.take_along_axis(p_edge, jnp.broadcast_to(demo[..., None], demo.shape
                                                              + (t_max,)), axis=1)
    coef_on = jnp.broadcast_to(adv_on[..., None], adv_on.shape + (t_max,))
    coef_demo = adv_off[:, None, None] * shaping_weight(demo_edges, cfg.shaping_gamma)
    rl = path_pullback(tree, log_pi, paths, jnp.concatenate([idx, demo], axis=1),
                       jnp.concatenate([coef_on, coef_demo], axis=1))
    visits = path_visits(tree, paths, idx, jnp.ones(idx.shape + (t_max,)) / cfg.n_on)
    ent = entropy_field(tree, log_pi, visits)
    return weighted(tree, add_levels(scale_levels(luffy_scale(cfg), rl),
                                     scale_levels(cfg.entropy_coef, ent)))

  return mean_over_calls(one_call, key, n)


TREE_LUFFY = TreeRecipe(
    "luffy", TreeLUFFYConfig(), tree_luffy_field, tree_luffy_estimate,
    "mixed group (n_on + demo), Â = r − mean; demo tokens shaped f(π_t) = π_t/(π_t + γ) per token",
    "Yan et al. arXiv 2504.14945; ElliottYan/LUFFY mix_core_alg.py::"
    "compute_token_on_off_policy_loss (fusion-methods.md §4)",
    prepare=fill_reward_levels)

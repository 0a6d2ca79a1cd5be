r"""BREAD on trees (Zhang et al., arXiv 2506.17211): branched rollouts from expert anchors.

Per prompt a GRPO group of G rollouts is drawn from the root. If it has a success (r > threshold)
it is trained as usual. If the whole group fails, the student branches from expert anchors: the
prefixes y*_{<l} of a demonstration y* ∼ d, shortest first (l = 1, 2, …, |y*| − 1); at each anchor
a group of G continuations is drawn from π below it, and the first anchor whose group contains a
success is used: GRPO on the continuation tokens only (the anchor tokens are context). If no anchor
succeeds the prompt gives no update. Every update thus contains a successful trace.

[UNCONFIRMED] (abstract only, no public code; fusion-methods.md §8): the search is read as the
sequential shortest-first search above (the paper's "Episode Anchor Search" may binary-search over
the prefix length; both pick the shortest successful anchor when success is monotone in l), the
anchors receive no loss, the group size (G = 8 here) and GRPO's std normalisation.

Exact field (one prompt, ascent), with f(s) = (1 − p(s))^G the probability that a group drawn
below s all fails (p(s) = π(r > threshold | s)):

.. math:: g = a \sum_s \omega(s)\, \mathbb{E}_{y \sim \pi(\cdot|s)}\big[\bar A_s(y)\,
          \nabla\log\pi(y|s)\big],\qquad
          \omega = \delta_{root} + \sum_{y^*} d(y^*) \sum_{l=1}^{|y^*|-1} f(root)
          \prod_{j=1}^{l-1} f(y^*_{<j})\, \delta_{y^*_{<l}}

with Ā_s(y) = E[Â 1{K ≥ 1} | y] in a group of G from π(·|s) (exact enumeration,
:func:`~.continuations.start_group_advantage` with gate K ≥ 1) and a = G (``group_sum``) or 1.

References: fusion-methods.md §8.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._compiled import compiled
from ...recipes.aggregation import RL_AGGREGATIONS, group_scale
from ...recipes.groups import sample_group_advantage
from ...recipes.options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_positive,
)
from ..fields import weighted
from ..instance import TreeInstance
from ..policy import Levels, policy_log_probs
from .base import TreeRecipe
from .continuations import (
  below,
  conditional_leaf_probs,
  continuation_coefficients,
  fill_reward_levels,
  leaf_rewards,
  sample_below,
  sample_data,
  start_group_advantage,
)
from .hints import (
  all_leaves,
  leaf_data,
  leaf_paths,
  mean_over_calls,
  path_gather,
  path_pullback,
  path_visits,
  scale_levels,
)

__all__ = ["TreeBREADConfig", "anchor_weights", "tree_bread_field", "tree_bread_estimate",
           "TREE_BREAD"]


@dataclasses.dataclass(frozen=True)
class TreeBREADConfig:
  """BREAD on trees ([UNCONFIRMED] defaults: G = 8, GRPO with std).

  Attributes:
    n_rollouts: G ≥ 1 per group (root and every anchor).
    use_std, eps: GRPO std normalisation and its offset (> 0).
    success_threshold: success means r > threshold (finite).
    rl_aggregation: ``group_sum`` or ``group_mean``.
    reward_levels: distinct rewards per prompt for the std enumeration (None: from the tree).
  """
  n_rollouts: int = 8
  use_std: bool = True
  eps: float = 1e-6
  success_threshold: float = 0.0
  rl_aggregation: str = "group_sum"
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_rollouts", 1)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_finite(self, "success_threshold")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)
    require_int(self, "reward_levels", 1, optional=True)


def anchor_weights(tree: TreeInstance, paths, q: jax.Array, cfg: TreeBREADConfig) -> jax.Array:
  """[X, Nn] ω(s): the probability that the group used starts at node s (module formula).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> from nondecoupling.theory.tree.recipes.continuations import below
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> from nondecoupling.theory.tree.recipes.continuations import conditional_leaf_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(1, 1): 1.0},
    ...                lambda y: float(tuple(y) == (1, 1)))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))
    >>> paths = leaf_paths(tree)
    >>> q = conditional_leaf_probs(tree, log_pi, below(tree, paths))
    >>> cfg = TreeBREADConfig(n_rollouts=2)
    >>> anchor_weights(tree, paths, q, cfg).tolist()  # root: 1; anchor (1,): (1 − 1/4)^2
    [[1.0, 0.5625]]
  """
  succ = (leaf_rewards(tree) > cfg.success_threshold).astype(q.dtype)
  fail = (1.0 - jnp.sum(q * succ[:, None, :], axis=-1)) ** cfg.n_rollouts     # [X, Nn]
  f_path = path_gather(paths, fail)                                            # [X, S, T]
  t = jnp.arange(paths.node.shape[-1])[None, None, :]
  f_anchor = jnp.where((t >= 1) & paths.valid, f_path, 1.0)
  shifted = jnp.concatenate([jnp.ones_like(f_anchor[..., :1]), f_anchor[..., :-1]], axis=-1)
  before = jnp.cumprod(shifted, axis=-1)                                       # Π_{1≤j<l}
  weight = jnp.where((t >= 1) & paths.valid,
                     leaf_data(tree)[..., None] * fail[:, :1, None] * before, 0.0)
  omega = path_visits(tree, paths, all_leaves(paths), weight)
  return omega.at[:, 0].add(1.0)


@compiled("cfg", prepare=fill_reward_levels)
def tree_bread_field(tree: TreeInstance, theta: Levels, cfg: TreeBREADConfig) -> Levels:
  r"""Exact expected ascent field of BREAD on a tree (module formula), prompt weights included.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeBREADConfig(n_rollouts=2, use_std=False)
    >>> tree_bread_field(tree, initial_logits(tree), cfg)[0].tolist()  # depth 1: Dr.GRPO, G = 2
    [[[-0.25, 0.25]]]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  under = below(tree, paths)
  q = conditional_leaf_probs(tree, log_pi, under)
  adv = start_group_advantage(tree, q, under, cfg.n_rollouts, cfg.use_std, cfg.eps,
                              cfg.success_threshold, 1, cfg.reward_levels)
  omega = anchor_weights(tree, paths, q, cfg)
  coef = continuation_coefficients(paths, omega, q, adv)
  g = path_pullback(tree, log_pi, paths, all_leaves(paths), coef)
  return weighted(tree, scale_levels(group_scale(cfg.rl_aggregation, cfg.n_rollouts), g))


@compiled("cfg", "n", prepare=fill_reward_levels)
def tree_bread_estimate(tree: TreeInstance, theta: Levels, cfg: TreeBREADConfig, key: jax.Array,
                        n: int) -> Levels:
  r"""Mean of n sampled BREAD gradients: the root group, else the first anchor group with a
  success (groups drawn at every anchor, the first successful one used), a (1/G) Σ_i Â_i
  Σ_{t ≥ l} ∇log π(y_{i,t}|·).

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeBREADConfig(n_rollouts=2, use_std=False)
    >>> g = tree_bread_estimate(tree, initial_logits(tree), cfg, jax.random.PRNGKey(0), 4)
    >>> [round(v, 6) for v in g[0][0, 0].tolist()]  # mean of 4 sampled gradients
    [-0.25, 0.25]
  """
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  rewards = leaf_rewards(tree)
  under = below(tree, paths)
  n_x, _, t_max = paths.node.shape
  g_size = cfg.n_rollouts
  scale = group_scale(cfg.rl_aggregation, g_size)
  depth = jnp.arange(t_max)

  def one_call(k):
    k_demo, k_groups = jax.random.split(k)
    demo = sample_data(k_demo, tree, 1)
    length = jnp.take_along_axis(paths.length, demo, axis=1)               # [X, 1]
    nodes = jnp.take_along_axis(paths.node, demo[..., None], axis=1)[:, 0]  # [X, T]
    start = jnp.where(depth[None, :] == 0, 0, nodes)                                 # root, anchors
    draws = sample_below(k_groups, tree, log_pi, under, start, g_size)     # [X, T, G]
    r = jnp.take_along_axis(rewards, draws.reshape(n_x, -1), axis=1).reshape(draws.shape)
    ok = jnp.any(r > cfg.success_threshold, axis=-1) & ((depth[None, :] == 0) | (depth[None, :] < length))
    first = jnp.argmax(ok, axis=-1)                                         # [X]
    used = jnp.any(ok, axis=-1)[:, None]
    chosen = jnp.take_along_axis(draws, first[:, None, None], axis=1)[:, 0]  # [X, G]
    r_used = jnp.take_along_axis(r, first[:, None, None], axis=1)[:, 0]
    adv = jax.vmap(lambda v: sample_group_advantage(v, cfg.use_std, cfg.eps))(r_used)
    after = (depth[None, :] >= first[:, None])[:, None, :]
    coef = jnp.where(used[..., None] & after, scale * adv[..., None] / g_size, 0.0)
    return weighted(tree, path_pullback(tree, log_pi, paths, chosen, coef))

  return mean_over_calls(one_call, key, n)


TREE_BREAD = TreeRecipe(
    "bread", TreeBREADConfig(), tree_bread_field, tree_bread_estimate,
    "GRPO; when the root group all fails, groups branch from demonstration prefixes, shortest "
    "first, the first with a success is trained (continuation tokens only)",
    "Zhang et al. arXiv 2506.17211 (abstract only, no public code; fusion-methods.md §8)",
    prepare=fill_reward_levels)

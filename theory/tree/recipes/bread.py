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
:func:`~.starts.level_group_advantage` with gate K ≥ 1) and a = G (``group_sum``) or 1.

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
from ..policy import Levels, policy_log_probs, policy_log_probs_and_probs
from ..sampling import pullback
from .base import TreeRecipe
from .continuations import (
  fill_reward_levels,
  leaf_rewards,
  levels_for,
  sample_below,
  sample_data,
)
from .hints import (
  leaf_paths,
  mean_over_calls,
  path_pullback,
  scale_levels,
)
from .starts import below_expectations, start_advantages, started_coefficients

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


def anchor_weights(tree: TreeInstance, fail: Levels) -> Levels:
  r"""Per level [X, N_t] ω(s): the probability that the group used starts at node s (module
  formula), top-down: ω(root) = 1 and, at depth l ≥ 1, ω(s) = D(s) f(root) Π_{1≤j<l} f(s_{<j})
  with D(s) the demonstration mass below s.

  Args:
    tree: the tree; fail: per level [X, N_t] f(s) = (1 − p(s))^G.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(1, 1): 1.0},
    ...                lambda y: float(tuple(y) == (1, 1)))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> fail = (jnp.array([[0.75 ** 2]]), jnp.array([[0.5 ** 2]]))  # uniform π, G = 2
    >>> [a.tolist() for a in anchor_weights(tree, fail)]  # root: 1; anchor (1,): (1 − 1/4)^2
    [[[1.0]], [[0.5625]]]
  """
  _, data_below = below_expectations(
      tree, None, tuple(lv.data[..., None] for lv in tree.levels), weighted=False)
  root_fail = fail[0][:, :1]
  out = [jnp.where(tree.levels[0].node, 1.0, 0.0).astype(fail[0].dtype)]
  before = None                                                    # Π_{1≤j<l} f(s_{<j})
  for t in range(1, len(tree.levels)):
    lv = tree.levels[t]
    before = (jnp.ones_like(fail[t]) if t == 1 else
              jnp.take_along_axis(before * fail[t - 1], lv.parent, axis=1))
    before = jnp.where(lv.node, before, 0.0)
    out.append(data_below[t][..., 0] * root_fail * before)
  return tuple(out)


@compiled("cfg", prepare=fill_reward_levels)
def tree_bread_field(tree: TreeInstance, theta: Levels, cfg: TreeBREADConfig) -> Levels:
  r"""Exact expected ascent field of BREAD on a tree (module formula), prompt weights included.

  Level by level (:mod:`.starts`): the reward levels' masses below every node give the group
  advantage of each start node and its all-fail probability f(s) (summed over the failing levels,
  so f stays exact when p(s) is near 1); cost linear in the nodes.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> cfg = TreeBREADConfig(n_rollouts=2, use_std=False)
    >>> tree_bread_field(tree, initial_logits(tree), cfg)[0].tolist()  # depth 1: Dr.GRPO, G = 2
    [[[-0.25, 0.25]]]
  """
  log_pi, pi = policy_log_probs_and_probs(tree, theta)
  m_edge, m_node, values, used, adv = start_advantages(
      tree, pi, levels_for(tree, cfg.reward_levels), cfg.n_rollouts, cfg.use_std, cfg.eps,
      cfg.success_threshold, 1)
  failing = (used & (values <= cfg.success_threshold)).astype(values.dtype)   # [X, L]
  fail = tuple(jnp.einsum("xnl,xl->xn", m, failing) ** cfg.n_rollouts for m in m_node)
  coef, _ = started_coefficients(tree, pi, anchor_weights(tree, fail), adv, m_edge)
  g = pullback(tree, log_pi, coef)
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
    draws = sample_below(k_groups, tree, log_pi, paths, start, g_size)     # [X, T, G]
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

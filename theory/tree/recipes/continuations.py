"""Rollouts that start at a node of the tree (a hint or prefix end, an anchor): the law of their
continuations below it, the exact group advantage of continuations drawn from π there, the node
visits they make, and sampling them (used by UFT, Prefix-RFT, BREAD, LUFFY, SRFT, HPT, ReLIFT).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._numerics import NEG_INF, safe_log
from ...instance import Instance
from ...recipes.groups import (
  enumerated_advantage,
  gated_mean_advantage,
  mean_group_advantage,
  reward_levels,
)
from ..atomic import leaf_instance, leaf_policy
from ..instance import TreeInstance
from ..policy import Levels, flat_slots, leaf_mask, log_reach
from .hints import Paths, flat_nodes, path_visits

__all__ = ["below", "conditional_leaf_probs", "continuation_coefficients", "continuation_visits",
           "fill_reward_levels", "leaf_rewards", "levels_for", "sample_below", "sample_data",
           "start_group_advantage"]


def below(tree: TreeInstance, paths: Paths) -> jax.Array:
  """[X, Nn, S] bool: leaf y lies below (or its path passes through) node s.

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> below(tree, paths).tolist()  # rows: root, (1,); columns: leaf slots
    [[[True, False, True, True], [False, False, True, True]]]
  """
  n_x, s, t_max = paths.node.shape
  n_nodes = sum(int(lv.node.shape[-1]) for lv in tree.levels)
  y = jnp.broadcast_to(jnp.arange(s)[None, :, None], paths.node.shape)
  hit = jnp.zeros((n_x, n_nodes, s), jnp.int32).at[
      jnp.arange(n_x)[:, None, None], paths.node, y].add(paths.valid.astype(jnp.int32))
  return hit > 0


def conditional_leaf_probs(tree: TreeInstance, log_pi: Levels, under: jax.Array) -> jax.Array:
  r"""[X, Nn, S] π(y | s) = π(y)/P_π(s) on the leaves below s (0 elsewhere), in log space.

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> conditional_leaf_probs(tree, log_pi, below(tree, paths)).round(6).tolist()
    [[[0.5, 0.0, 0.25, 0.25], [0.0, 0.0, 0.5, 0.5]]]
  """
  leaf_lp = leaf_policy(tree, log_pi)
  reach = flat_nodes(log_reach(tree, log_pi))
  safe_reach = jnp.where(jnp.isfinite(reach), reach, 0.0)
  lq = leaf_lp[:, None, :] - safe_reach[:, :, None]
  return jnp.where(under & jnp.isfinite(reach)[:, :, None], jnp.exp(lq), 0.0)


def leaf_rewards(tree: TreeInstance) -> jax.Array:
  """[X, S] r(x, y) on the flat leaf axis (0 off the leaves).

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> leaf_rewards(tree).tolist()
    [[0.0, 0.0, 0.0, 1.0]]
  """
  return jnp.where(leaf_mask(tree), flat_slots(tuple(lv.reward for lv in tree.levels)), 0.0)


def levels_for(tree: TreeInstance, levels: int | None) -> int:
  """Reward levels per prompt for the group enumerations: ``levels`` or read from a concrete tree
  (the leaf count when traced).

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> levels_for(tree, None), levels_for(tree, 3)  # rewards {0, 1}: 2 levels
    (2, 3)
  """
  if levels is not None:
    return int(levels)
  try:
    return reward_levels(leaf_instance(tree, support_only=True))
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return int(leaf_mask(tree).shape[-1])


def fill_reward_levels(tree: TreeInstance, cfg):
  """``cfg`` with ``reward_levels`` read from a concrete tree (:func:`levels_for`), unless set.

  The ``prepare`` hook of the recipes whose groups start below a prefix: traced, the level count
  would fall back to the leaf count (correct, but a larger enumeration).

  Examples:
    >>> import dataclasses
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...   reward_levels: int | None = None
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> fill_reward_levels(tree, Config()).reward_levels
    2
  """
  if cfg.reward_levels is not None:
    return cfg
  return dataclasses.replace(cfg, reward_levels=levels_for(tree, None))


def start_group_advantage(tree: TreeInstance, q: jax.Array, under: jax.Array, group: int,
                          use_std: bool, eps: float, threshold: float, gate_low: int,
                          levels: int | None) -> jax.Array:
  r"""[X, Nn, S] E[Â 1{K ≥ gate_low} | y] of a continuation y in a group of G drawn from π(·|s).

  Each start node s is a row of an atomic instance on the leaves below it (sampling law
  q = π(·|s)), and the atomic group expectations of :mod:`...recipes.groups` apply: without std
  (1 − 1/G)(r(y) − V(s)) (gate_low = 0) or the binomial sum over the others' successes; with std
  the enumeration of the others' reward levels. K counts successes r > threshold in the group.

  Args:
    tree: the tree; q: [X, Nn, S] :func:`conditional_leaf_probs`; under: [X, Nn, S] :func:`below`.
    group: G ≥ 1; use_std, eps: std normalisation; threshold: success means r > threshold.
    gate_low: the group counts only when K ≥ gate_low (0: always).
    levels: reward levels (:func:`levels_for`).

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> under = below(tree, paths)
    >>> q = conditional_leaf_probs(tree, log_pi, under)
    >>> adv = start_group_advantage(tree, q, under, 2, False, 1e-6, 0.5, 0, None)
    >>> adv.round(6).tolist()  # (1 − 1/G)(r(y) − V(s)): V(root) = 1/4, V((1,)) = 1/2
    [[[-0.125, 0.0, -0.125, 0.375], [0.0, 0.0, -0.25, 0.25]]]
  """
  n_x, n_nodes, s = q.shape
  r = jnp.broadcast_to(leaf_rewards(tree)[:, None, :], q.shape).reshape(n_x * n_nodes, s)
  mask = under.reshape(n_x * n_nodes, s)
  rows = Instance(prompt_weights=jnp.ones((n_x * n_nodes,), q.dtype),
                  data=jnp.zeros_like(r), reference=mask.astype(q.dtype), reward=r,
                  beta=tree.beta, response_mask=mask)
  q_rows = q.reshape(n_x * n_nodes, s)
  if use_std:
    pos, neg = enumerated_advantage(rows, q_rows, group - 1, levels_for(tree, levels), True, eps,
                                    threshold, gate=(gate_low, group))
    b = pos - neg
  elif gate_low > 0:
    b = gated_mean_advantage(rows, q_rows, group, gate_low, threshold)
  else:
    b = mean_group_advantage(rows, q_rows, group)
  return jnp.where(under, b.reshape(q.shape), 0.0)


def continuation_coefficients(paths: Paths, omega: jax.Array, q: jax.Array, adv: jax.Array
                              ) -> jax.Array:
  r"""[X, S, T] exact path coefficients of rollouts started by a law ω on nodes.

  .. math:: c(y, t) = \sum_{d \le t} \omega(y_{<d})\, \pi(y \mid y_{<d})\, W(y_{<d}, y)

  so that Σ_y Σ_t c(y, t)(e_{y_t} − π(·|y_<t)) = Σ_s ω(s) E_{y∼π(·|s)}[W(s, y) ∇ log π(y|s)].

  Args:
    paths: :func:`leaf_paths`; omega: [X, Nn] start weights; q: [X, Nn, S] π(y|s);
    adv: [X, Nn, S] per-start leaf weight W(s, y) (e.g. :func:`start_group_advantage`).

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> under = below(tree, paths)
    >>> q = conditional_leaf_probs(tree, log_pi, under)
    >>> c = continuation_coefficients(paths, jnp.array([[1.0, 0.0]]), q, jnp.ones_like(q))
    >>> c.round(6).tolist()  # ω = root, W = 1: c(y, t) = π(y)
    [[[0.5, 0.5], [0.0, 0.0], [0.25, 0.25], [0.25, 0.25]]]
  """
  per_start = jnp.take_along_axis(omega, paths.node.reshape(paths.node.shape[0], -1),
                                  axis=-1).reshape(paths.node.shape)
  qa = q * adv                                               # [X, Nn, S]
  n_x, s, t_max = paths.node.shape
  y = jnp.broadcast_to(jnp.arange(s)[None, :, None], paths.node.shape)
  got = qa[jnp.arange(n_x)[:, None, None], paths.node, y]    # [X, S, T]
  return jnp.cumsum(jnp.where(paths.valid, per_start * got, 0.0), axis=-1)


def continuation_visits(tree: TreeInstance, paths: Paths, omega: jax.Array, q: jax.Array
                        ) -> jax.Array:
  r"""[X, Nn] Σ_{s ≤ u} ω(s) P_π(u | s): expected visits of node u by rollouts started by ω.

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> under = below(tree, paths)
    >>> q = conditional_leaf_probs(tree, log_pi, under)
    >>> continuation_visits(tree, paths, jnp.array([[1.0, 0.0]]), q).round(6).tolist()  # = P_π
    [[1.0, 0.5]]
  """
  ones = jnp.ones_like(q)
  mass = continuation_coefficients(paths, omega, q, ones)        # Σ_{d≤t} ω π(y|y_<d)
  n_x, s = paths.length.shape
  idx = jnp.broadcast_to(jnp.arange(s)[None, :], (n_x, s))
  return path_visits(tree, paths, idx, mass)


def sample_below(key: jax.Array, tree: TreeInstance, log_pi: Levels, under: jax.Array,
                 start: jax.Array, n: int) -> jax.Array:
  """[X, M, n] n leaves drawn from π(·|s) for each start node s = start[x, m] (flat node ids).

  A start node with no leaf below gets draws of index 0 (callers mask them).

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> import jax.numpy as jnp
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> draws = sample_below(jax.random.PRNGKey(0), tree, log_pi, below(tree, paths),
    ...                      jnp.array([[1]]), 4)
    >>> draws.tolist()  # from node (1,): leaves (1, 0), (1, 1) only
    [[[2, 2, 2, 2]]]
  """
  leaf_lp = leaf_policy(tree, log_pi)                                  # [X, S]
  rows = jnp.take_along_axis(under, start[..., None], axis=1)         # [X, M, S]
  logits = jnp.where(rows, leaf_lp[:, None, :], NEG_INF)
  logits = jnp.where(jnp.any(rows, axis=-1, keepdims=True), logits, 0.0)
  draws = jax.random.categorical(key, logits, axis=-1, shape=(n,) + logits.shape[:-1])
  return jnp.moveaxis(draws, 0, -1)


def sample_data(key: jax.Array, tree: TreeInstance, n: int) -> jax.Array:
  """[X, n] demonstrations y* ∼ d(·|x) as flat leaf-slot indices.

  Examples:
    >>> from nondecoupling.theory.tree.recipes.hints import leaf_paths
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> sorted(set(sample_data(jax.random.PRNGKey(0), tree, 50).ravel().tolist()))  # d's support
    [0, 3]
  """
  log_d = safe_log(jnp.where(leaf_mask(tree), flat_slots(tuple(lv.data for lv in tree.levels)),
                             0.0))
  return jax.random.categorical(key, log_d, axis=-1, shape=(n, log_d.shape[0])).T

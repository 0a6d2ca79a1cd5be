"""Rollouts that start at a node of the tree (a hint or prefix end, an anchor): sampling
continuations there, the leaf rewards and the reward-level count of the group
enumerations (used by UFT, Prefix-RFT, BREAD, LUFFY, SRFT, HPT, ReLIFT). Their exact fields are
level by level in :mod:`.starts`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..._numerics import NEG_INF, safe_log
from ...recipes.groups import reward_levels
from ..atomic import leaf_instance, leaf_policy
from ..instance import TreeInstance
from ..policy import Levels, flat_slots, leaf_mask
from .hints import Paths, node_offsets

__all__ = ["fill_reward_levels", "leaf_rewards", "levels_for", "sample_below", "sample_data"]


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


def sample_below(key: jax.Array, tree: TreeInstance, log_pi: Levels, paths: Paths,
                 start: jax.Array, n: int) -> jax.Array:
  """[X, M, n] n leaves drawn from π(·|s) for each start node s = start[x, m] (flat node ids).

  The leaves below s are those whose path passes through s at its depth (read from ``paths``:
  cost M × leaves per prompt, no [nodes × leaves] table). A start node with no leaf below gets
  draws of index 0 (callers mask them).

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
    >>> draws = sample_below(jax.random.PRNGKey(0), tree, log_pi, leaf_paths(tree),
    ...                      jnp.array([[1]]), 4)
    >>> draws.tolist()  # from node (1,): leaves (1, 0), (1, 1) only
    [[[2, 2, 2, 2]]]
  """
  offsets = jnp.asarray(node_offsets(tree))
  depth = jnp.searchsorted(offsets, start, side="right") - 1            # [X, M]
  t_max = paths.node.shape[-1]
  at = jax.nn.one_hot(depth, t_max, dtype=jnp.bool_)                     # [X, M, T]
  through = (paths.node[:, None, :, :] == start[..., None, None]) & paths.valid[:, None]
  rows = jnp.any(through & at[:, :, None, :], axis=-1)                   # [X, M, S]
  leaf_lp = leaf_policy(tree, log_pi)                                    # [X, S]
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

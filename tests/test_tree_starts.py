"""Rollouts from start nodes, level by level (theory/tree/recipes/starts.py), against the dense
(nodes × leaves) forms in log space (tests/continuation_reference.py: a different algorithm), and
the start-node recipes' exact fields checked to hold no (nodes × leaves) array."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from continuation_reference import (
  below,
  conditional_leaf_probs,
  continuation_coefficients,
  continuation_visits,
  start_group_advantage,
)

from bench.numpy_sequences import sequence_paths
from bench.numpy_start_fields import bread_field, prefix_rft_field, uft_field
from nondecoupling.theory.tree.instance import Bucket, index_tree, n_leaves, n_nodes
from nondecoupling.theory.tree.policy import policy_log_probs, policy_log_probs_and_probs
from nondecoupling.theory.tree.recipes.continuations import levels_for
from nondecoupling.theory.tree.recipes.hints import (
  all_leaves,
  flat_nodes,
  leaf_paths,
  node_offsets,
  path_pullback,
)
from nondecoupling.theory.tree.recipes.prefix_rft import (
  TreePrefixRFTConfig,
  prefix_length_pmf,
  prefix_length_table,
  prefix_ratio_mean,
)
from nondecoupling.theory.tree.recipes.registry import TREE_RECIPES
from nondecoupling.theory.tree.recipes.starts import (
  leaf_reward_levels,
  node_rows,
  start_advantages,
  started_coefficients,
)
from nondecoupling.theory.tree.recipes.uft import (
  hint_length_pmf,
  hint_length_table,
  uft_hint_probability,
)
from nondecoupling.theory.tree.sampling import pullback
from nondecoupling.verify.tree_families import complete_tree, random_trees

BUCKET = Bucket(prompts=2, vocab=4, nodes=(1, 3, 6, 8))


def _case(seed, rewards, scale):
  rng = np.random.default_rng(seed)
  tree = index_tree(random_trees(rng, 1, BUCKET, rewards), 0)
  theta = tuple(jnp.asarray(rng.normal(0.0, scale, lv.reference.shape)) for lv in tree.levels)
  node = flat_nodes(tuple(lv.node for lv in tree.levels))
  omega = jnp.where(node, jnp.asarray(rng.uniform(0.0, 1.0, node.shape)), 0.0)
  return tree, theta, omega


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _both_forms(tree, theta, omega, use_std, gate, levels):
  """(dense advantages, dense field, dense visits, ours read back per (node, leaf), our field,
  our visits) for groups of 3 with threshold 0.3."""
  group, eps, threshold = 3, 1e-6, 0.3
  log_pi = policy_log_probs(tree, theta)
  paths = leaf_paths(tree)
  under = below(tree, paths)
  q = conditional_leaf_probs(tree, log_pi, under)
  dense_adv = start_group_advantage(tree, q, under, group, use_std, eps, threshold, gate, levels)
  dense = path_pullback(tree, log_pi, paths, all_leaves(paths),
                        continuation_coefficients(paths, omega, q, dense_adv))
  dense_visits = continuation_visits(tree, paths, omega, q)
  _, pi = policy_log_probs_and_probs(tree, theta)
  m_edge, _, _, _, adv_levels = start_advantages(tree, pi, levels, group, use_std, eps,
                                                 threshold, gate)
  level_of = leaf_reward_levels(tree, levels)[0]
  per_leaf = jnp.take_along_axis(node_rows(adv_levels),
                                 jnp.broadcast_to(level_of[:, None, :], under.shape), axis=2)
  starts = tuple(omega[:, o:o + lv.node.shape[-1]]
                 for o, lv in zip(node_offsets(tree), tree.levels))
  coef, visits = started_coefficients(tree, pi, starts, adv_levels, m_edge)
  return (dense_adv, dense, dense_visits, jnp.where(under, per_leaf, 0.0),
          pullback(tree, log_pi, coef), flat_nodes(visits))


# a verifier's 0/1 reward with and without std and the K ≥ 1 gate; distinct rewards on every
# leaf (many levels) without std, and once with std (the enumeration over those levels)
START_CASES = ([(seed, "verifier", std, gate) for seed in range(3)
                for std, gate in [(True, 0), (True, 1), (False, 0), (False, 1)]]
               + [(seed, "uniform", False, gate) for seed in range(3) for gate in (0, 1)]
               + [(0, "uniform", True, 1)])


@pytest.mark.parametrize("seed,rewards,use_std,gate", START_CASES)
def test_start_node_field_and_visits_equal_the_dense_reference(seed, rewards, use_std, gate):
  # scale 6: conditionals down to ~1e-10, so a node π rarely reaches is in every case
  tree, theta, omega = _case(seed, rewards, 6.0 if seed == 2 else 1.5)
  levels = 2 if rewards == "verifier" else levels_for(tree, None)
  dense_adv, dense, dense_visits, adv, ours, visits = _both_forms(tree, theta, omega, use_std,
                                                                  gate, levels)
  assert_close(adv, dense_adv)
  for a, b in zip(ours, dense):
    assert_close(a, b)
  assert_close(visits, dense_visits)


def _largest_intermediate(jaxpr) -> int:
  """The most elements of any value a jaxpr (and every jaxpr inside it) computes."""
  biggest = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      biggest = max(biggest, int(np.prod(v.aval.shape)) if hasattr(v.aval, "shape") else 0)
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      biggest = max(biggest, _largest_intermediate(inner))
  return biggest


@pytest.mark.parametrize("name", ["uft", "bread", "prefix_rft"])
def test_start_node_field_holds_no_nodes_by_leaves_array(name):
  # complete k = 4, T = 5 tree: 121 internal nodes and 364 leaves per prompt (44,044 pairs)
  tree = complete_tree(4, 5, 2)
  tree = dataclasses.replace(tree, levels=tuple(  # a verifier's 0/1 reward: two reward levels
      dataclasses.replace(lv, reward=jnp.where(lv.reward > 0, 1.0, 0.0)) for lv in tree.levels))
  recipe = TREE_RECIPES[name]
  cfg = recipe.prepare(tree, recipe.config)
  theta = tuple(jnp.zeros(lv.reference.shape) for lv in tree.levels)
  jaxpr = jax.make_jaxpr(lambda t, th: recipe.field(t, th, cfg))(tree, theta).jaxpr
  nodes, leaves = int(n_nodes(tree)[0]), int(n_leaves(tree)[0])
  slots = sum(int(np.prod(lv.reference.shape)) for lv in tree.levels)  # 2 prompts × 484
  largest = _largest_intermediate(jaxpr)
  assert largest <= 2 * slots * len(tree.levels), (largest, slots)
  assert largest < 2 * nodes * leaves / 10


@pytest.mark.parametrize("p,segments", [(0.3, 5), (0.95, 2), (0.0, 1), (1.0, 3)])
def test_hint_length_table_rows_are_each_demonstrations_law(p, segments):
  # the static table by length (Python's exact binomial) against the per-leaf law (log-gamma)
  tree, _, _ = _case(4, "verifier", 1.0)
  paths = leaf_paths(tree)
  per_leaf = np.asarray(hint_length_pmf(paths, p, segments))
  table = hint_length_table(p, segments, len(tree.levels))
  length = np.asarray(paths.length)
  on = length > 0
  assert on.any()
  assert_close(per_leaf[on], table[length[on] - 1])


@pytest.mark.parametrize("mean,kappa", [(0.6, 2.0), (0.95, 0.5), (0.05, 8.0)])
def test_prefix_length_table_rows_are_each_demonstrations_law(mean, kappa):
  tree, _, _ = _case(5, "verifier", 1.0)
  cfg = TreePrefixRFTConfig(ratio_mean=mean, concentration=kappa)
  paths = leaf_paths(tree)
  per_leaf = np.asarray(prefix_length_pmf(paths, cfg))
  table = np.asarray(prefix_length_table(cfg, len(tree.levels)))
  length = np.asarray(paths.length)
  on = length > 0
  assert_close(per_leaf[on], table[length[on] - 1])
  assert_close(table.sum(axis=1), np.ones(len(tree.levels)))


@pytest.mark.parametrize("name", ["uft", "bread", "prefix_rft"])
def test_start_node_field_equals_the_benchmarks_numpy_baseline(name):
  # the benchmark's NumPy/SciPy baseline works over sequences × positions (reverse cumulative
  # log-probabilities, sparse incidence products): a third, independent computation
  tree = complete_tree(4, 4, 3, seed=1)
  tree = dataclasses.replace(tree, levels=tuple(
      dataclasses.replace(lv, reward=jnp.where(lv.reward > 0, 1.0, 0.0)) for lv in tree.levels))
  rng = np.random.default_rng(2)
  theta = tuple(jnp.asarray(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tree.levels)
  recipe = TREE_RECIPES[name]
  cfg = recipe.prepare(tree, recipe.config)
  levels = [{k: np.asarray(getattr(lv, k)) for k in ("leaf", "internal", "reference", "data",
                                                     "reward", "child")} for lv in tree.levels]
  flat, mask = sequence_paths(levels)
  args = (levels, [np.asarray(t) for t in theta], np.asarray(tree.prompt_weights), flat, mask)
  if name == "uft":
    theirs = uft_field(*args, cfg.n_rollouts, uft_hint_probability(cfg), cfg.max_segments,
                       cfg.sft_coef, cfg.kl_coef, cfg.entropy_coef, cfg.eps)
  elif name == "bread":
    theirs = bread_field(*args, cfg.n_rollouts, cfg.eps)
  else:
    theirs = prefix_rft_field(*args, cfg.n_on, prefix_ratio_mean(cfg), cfg.concentration,
                              cfg.entropy_keep)
  for ours, ref in zip(recipe.field(tree, theta, cfg), theirs):
    assert_close(ours, ref)

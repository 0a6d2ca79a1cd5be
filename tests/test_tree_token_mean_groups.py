"""The ``token-mean`` group with two rewards by convolution (theory/tree/token_mean_groups.py).

References: the multiset enumeration of theory/tree/groups.py (itself tested against every ordered
group in tests/test_tree_groups.py), a direct product over ordered groups written here in NumPy,
DAPO's sampled estimator at G = 16, where the enumeration is beyond its limit, and the
benchmark's NumPy baseline over sequences.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from helpers import rms_error_by_calls

from bench.numpy_recipe_fields import recipe_field
from bench.numpy_sequences import sequence_paths
from nondecoupling.theory.tree import groups
from nondecoupling.theory.tree.policy import leaf_mask, policy_log_probs
from nondecoupling.theory.tree.recipes.group_rl import (
  DAPO,
  fill_levels,
  group_rl_estimate,
  group_rl_field,
)
from nondecoupling.theory.tree.token_mean_groups import others_law, two_reward_leaf_weights
from nondecoupling.verify.tree_families import complete_tree


def _binary(tree, threshold=0.0):
  """The tree with the reward 1{r > threshold}: two rewards per prompt."""
  return dataclasses.replace(tree, levels=tuple(
      dataclasses.replace(lv, reward=jnp.where(lv.reward > threshold, 1.0, 0.0))
      for lv in tree.levels))


def _theta(tree, seed, scale=1.5):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(0.0, scale, lv.reference.shape)) for lv in tree.levels)


def test_others_law_is_the_product_over_ordered_draws():
  """P(K, S) of 3 draws against the sum over all (class, length)³ sequences."""
  rng = np.random.default_rng(0)
  q = rng.random((2, 4))
  q[:, 0] = 0.0
  q /= q.sum()
  law = np.asarray(others_law(jnp.asarray(q), 3))
  brute = np.zeros_like(law)
  cells = [(c, ell) for c in (0, 1) for ell in (1, 2, 3)]
  for seq in itertools.product(cells, repeat=3):
    brute[sum(c for c, _ in seq), sum(ell for _, ell in seq)] += np.prod([q[c, e] for c, e in seq])
  assert_close(law, brute)
  assert abs(law.sum() - 1.0) < 1e-14


def test_leaf_weights_match_ordered_groups_written_out():
  """E[Â⁺ n], E[Â⁻ n], E[n] of every leaf against every ordered group of the others."""
  r = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
  length = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 3.0])
  mask = np.array([True, True, True, True, True, False])  # the last slot holds no leaf
  p = np.array([0.1, 0.2, 0.25, 0.3, 0.15, 0.0])
  log_p = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf)
  leaves = np.flatnonzero(mask)
  for g, use_std in itertools.product((1, 2, 4), (False, True)):
    got = [np.asarray(a) for a in two_reward_leaf_weights(
        jnp.asarray(r), jnp.asarray(mask), jnp.asarray(log_p), (2, 1, 3), group_size=g,
        use_std=use_std, eps=1e-6)]
    assert all(a[5] == 0.0 for a in got)
    for j in leaves:
      want = np.zeros(3)
      for others in itertools.product(leaves, repeat=g - 1):
        prob = np.prod(p[list(others)])
        rs = np.concatenate([[r[j]], r[list(others)]])
        if g == 1:
          adv = rs[0] / (1 + 1e-6) if use_std else rs[0]
        else:
          adv = rs[0] - rs.mean()
          if use_std:
            adv = adv / (rs.std(ddof=1) + 1e-6)
        n = 1.0 / (length[j] + length[list(others)].sum())
        want += prob * np.array([max(adv, 0.0) * n, max(-adv, 0.0) * n, n])
      assert_close(np.array([a[j] for a in got]), want, err_msg=f"G={g} std={use_std} j={j}")


@pytest.mark.parametrize("group_size", [1, 2, 5, 8])
@pytest.mark.parametrize("use_std", [False, True])
def test_convolution_equals_the_multiset_enumeration(group_size, use_std):
  """The same weights as the enumeration (a different algorithm) where that is feasible: a
  complete k = 3, T = 4 tree (ragged lengths 1–4, two rewards, 8 levels)."""
  tree = _binary(complete_tree(3, 4, 3, seed=group_size))
  log_pi = policy_log_probs(tree, _theta(tree, group_size))
  rewards = groups.leaf_rewards(tree)
  kw = dict(group_size=group_size, mode="token-mean", use_std=use_std, eps=1e-6,
            max_length=4.0, levels=groups.count_levels(tree, "token-mean"))
  conv = jax.jit(lambda lp: groups.expected_group_weights(tree, lp, rewards, reward_classes=2,
                                                          **kw))(log_pi)
  enum = jax.jit(lambda lp: groups.expected_group_weights(tree, lp, rewards, **kw))(log_pi)
  mask = np.asarray(leaf_mask(tree))
  for a, b in zip(conv, enum):
    assert_close(np.asarray(a)[mask], np.asarray(b)[mask])


def test_dapo_is_exact_at_g16_and_its_estimator_converges_to_it():
  """DAPO's defaults (G = 16, token-mean, std, dynamic sampling) on a complete k = 3, T = 5 tree
  (two rewards, lengths 1–5, the length-1 response only EOS: 9 levels, C(23, 15) = 490,314
  multisets, beyond the enumeration, as on the benchmark tree):
  the convolved field is the limit of the sampled estimator, its error shrinking as 1/√n (fitted
  log-log slope in [−0.65, −0.35] over n = 2^8 … 2^12 groups, 8 replicas) to below 5 % of the
  field's norm."""
  tree = _binary(complete_tree(3, 5, 2, seed=7))
  cfg = fill_levels(tree, DAPO.config)
  assert cfg.reward_classes == 2 and cfg.levels == 9 and cfg.group_size == 16
  with pytest.raises(groups.InfeasibleGroupEnumeration):
    groups.check_enumeration(cfg.levels, cfg.group_size)
  theta = _theta(tree, 3, scale=0.7)
  exact = jax.jit(group_rl_field, static_argnums=2)(tree, theta, cfg)
  chunk, chunks, reps = 256, 16, 8

  @jax.jit
  def chunk_errors(keys):
    means = jax.lax.map(lambda k: group_rl_estimate(tree, theta, cfg, k, chunk), keys)
    return tuple(m - e[None] for m, e in zip(means, exact))

  keys = jax.random.split(jax.random.PRNGKey(16), reps * chunks)
  diffs = [np.asarray(d).reshape((reps, chunks) + d.shape[1:]) for d in chunk_errors(keys)]
  ns, errs = rms_error_by_calls(diffs, chunk)
  slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
  norm = float(np.sqrt(sum(np.sum(np.asarray(a) ** 2) for a in exact)))
  assert -0.65 <= slope <= -0.35, (slope, errs)
  assert errs[-1] < 0.05 * norm, (errs[-1], norm)


@pytest.mark.parametrize("seed", [0, 1])
def test_dapo_field_equals_the_numpy_baseline_over_sequences(seed):
  """The benchmark's NumPy/SciPy DAPO field (bench/numpy_recipe_fields.py: per-sequence weights
  from the convolved law, dynamic sampling's factor from the binomial, one sparse product over the
  listed sequences) on a complete k = 4, T = 4 tree of 3 prompts, 0/1 reward, G = 16."""
  tree = _binary(complete_tree(4, 4, 3, seed=seed))
  theta = _theta(tree, seed, scale=1.0)
  cfg = fill_levels(tree, DAPO.config)
  levels = [{k: np.asarray(getattr(lv, k)) for k in ("leaf", "internal", "reference", "data",
                                                     "reward", "child")} for lv in tree.levels]
  flat, mask = sequence_paths(levels)
  theirs = recipe_field("dapo", levels, [np.asarray(t) for t in theta],
                        np.asarray(tree.prompt_weights), flat, mask, cfg.group_size, eps=cfg.eps)
  ours = jax.jit(group_rl_field, static_argnums=2)(tree, theta, cfg)
  for a, b in zip(ours, theirs):
    assert_close(np.asarray(a), b)

"""theory.tree.chunks: a function of a tree evaluated over chunks of prompts gives the numbers of
one pass over all prompts, per prompt and summed, whether or not the chunk divides the prompts.

The one-pass engine is itself checked against brute-force enumeration (test_tree_engine.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import assert_close

from nondecoupling.theory.tree import bellman, objectives as obj, policy
from nondecoupling.theory.tree.chunks import map_prompt_chunks, prompt_chunk
from nondecoupling.theory.tree.instance import Bucket, index_tree
from nondecoupling.verify.tree_families import probe_logits, random_trees

PROMPTS = 7
BUCKET = Bucket(PROMPTS, 4, (1, 4, 8))


def _exact(tree, theta):
  lp = policy.policy_log_probs(tree, theta)
  return {"L": obj.sft_loss(tree, lp), "J": obj.reward(tree, lp), "KL": obj.kl(tree, lp),
          "J_beta": obj.regularized_reward(tree, lp), "log_Z": bellman.log_partition(tree),
          "leaf": policy.leaf_log_probs(tree, lp),
          "grad_L": obj.sft_grad(tree, lp)}  # carries w_x: rows of weight-0 stale prompts differ


@pytest.fixture(scope="module")
def trees():
  rng = np.random.default_rng(11)
  batch = random_trees(rng, 3, BUCKET, prompts=[PROMPTS] * 3)
  return [(index_tree(batch, i), jax.tree.map(lambda a: a[i], probe_logits(rng, batch)))
          for i in range(3)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 6, 7, 64])
def test_chunks_give_the_one_pass_numbers(trees, chunk):
  one_pass = jax.jit(_exact)
  chunked = jax.jit(lambda t, th: map_prompt_chunks(_exact, t, th, chunk=chunk))
  for tree, theta in trees:
    want, got = one_pass(tree, theta), chunked(tree, theta)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
      assert g.shape == w.shape, path
      finite = np.isfinite(np.asarray(w))
      assert np.array_equal(finite, np.isfinite(np.asarray(g))), path
      assert_close(np.asarray(g)[finite], np.asarray(w)[finite], err_msg=str(path))


def test_chunks_under_vmap_over_trees(trees):
  stacked = jax.tree.map(lambda *a: np.stack(a), *[t for t, _ in trees])
  thetas = jax.tree.map(lambda *a: np.stack(a), *[th for _, th in trees])
  got = jax.jit(jax.vmap(lambda t, th: map_prompt_chunks(_exact, t, th, chunk=3)))(stacked, thetas)
  for i, (tree, theta) in enumerate(trees):
    want = jax.jit(_exact)(tree, theta)
    for key in ("L", "J", "KL", "log_Z"):
      assert_close(got[key][i], want[key], err_msg=key)


def test_an_output_neither_scalar_nor_per_prompt_is_refused(trees):
  tree, theta = trees[0]
  with pytest.raises(ValueError, match="scalar .* or per prompt"):
    map_prompt_chunks(lambda t, th: th[1].sum(0), tree, theta, chunk=2)  # [N_1, k]
  with pytest.raises(ValueError, match="chunk must be at least 1"):
    map_prompt_chunks(_exact, tree, theta, chunk=0)


def test_default_chunk_is_a_power_of_two_within_the_slot_budget(trees):
  tree, _ = trees[0]
  per_prompt = sum(lv.reference.shape[-2] * lv.reference.shape[-1] for lv in tree.levels)
  for slots in (1, per_prompt, 3 * per_prompt, 1000 * per_prompt):
    c = prompt_chunk(tree, slots)
    assert c >= 1 and c & (c - 1) == 0
    assert c == 1 or c * per_prompt <= slots < 2 * c * per_prompt

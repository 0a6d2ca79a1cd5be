"""theory.tree.recipes.hints.leaf_pullback / leaf_visits: a coefficient per leaf, pulled back to the
logits bottom-up, against automatic differentiation of Σ_y c(y) log π(y) (an independent
reference), and the node totals against the scatter over every leaf's path (path_visits).

HPT's and ReLIFT's exact fields use these (their coefficients are constant along a path); the
fields themselves are checked against brute force in test_tree_demo_recipes.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from nondecoupling.theory.tree import policy
from nondecoupling.theory.tree.atomic import leaf_policy
from nondecoupling.theory.tree.instance import Bucket, index_tree
from nondecoupling.theory.tree.recipes.hints import (
  all_leaves,
  leaf_paths,
  leaf_pullback,
  leaf_visits,
  path_visits,
)
from nondecoupling.verify.tree_families import probe_logits, random_trees

BUCKET = Bucket(3, 4, (1, 4, 9, 12))


@pytest.mark.parametrize("seed", range(4))
def test_leaf_pullback_is_the_gradient_of_the_weighted_log_likelihood(seed):
  rng = np.random.default_rng(seed)
  batch = random_trees(rng, 1, BUCKET, rewards="verifier")
  tree, theta = index_tree(batch, 0), jax.tree.map(lambda a: a[0], probe_logits(rng, batch))
  leaves = np.asarray(leaf_policy(tree, policy.policy_log_probs(tree, theta))) > -np.inf
  assert leaves.sum() > 3  # a tree with several leaves per prompt on average
  c = jnp.asarray(np.where(leaves, rng.normal(size=leaves.shape), 0.0))

  def weighted_log_likelihood(th):
    log_leaf = leaf_policy(tree, policy.policy_log_probs(tree, th))
    return jnp.sum(jnp.where(leaves, c * jnp.where(leaves, log_leaf, 0.0), 0.0))

  # Jitted: evaluated eagerly, the gradient dispatches (and compiles) one program per primitive.
  want = jax.jit(jax.grad(weighted_log_likelihood))(theta)
  got = jax.jit(leaf_pullback)(tree, policy.policy_log_probs(tree, theta), c)
  for t, (g, w, lv) in enumerate(zip(got, want, tree.levels)):
    on = np.asarray(lv.leaf | lv.internal) & np.asarray(lv.node)[..., None]
    assert_close(np.asarray(g)[on], np.asarray(w)[on], err_msg=f"level {t}")
    assert not np.asarray(g)[~on].any(), f"level {t}: nonzero off the support"

  @jax.jit
  def scattered(tree, c):
    paths = leaf_paths(tree)
    per_depth = jnp.broadcast_to(c[..., None], paths.valid.shape)
    return path_visits(tree, paths, all_leaves(paths), per_depth)

  assert_close(np.asarray(jax.jit(leaf_visits)(tree, c)), np.asarray(scattered(tree, c)))

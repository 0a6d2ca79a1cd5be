"""The public tree-recipe functions run as one compiled program (theory/_compiled.py).

Called eagerly they give what their uncompiled code gives (the brute-force recipe tests check the
numbers themselves), read a count the configuration leaves open from the concrete tree first, as
their code did eagerly, and stay plain documented functions; under another trace the count is not
read (a traced tree has no values), so the function asks for it as before.
"""

from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest
from conftest import assert_close

from nondecoupling.theory.tree.build import PromptTree, build_tree
from nondecoupling.theory.tree.policy import initial_logits
from nondecoupling.theory.tree.recipes import group_rl, hpt


def _tree():
  p = PromptTree(3, 0, 3, {(): [0.2, 0.5, 0.3], (1,): [0.3, 0.3, 0.4], (2,): [0.5, 0.25, 0.25],
                           (1, 1): [0.4, 0.3, 0.3], (1, 2): [0.6, 0.2, 0.2],
                           (2, 1): [0.1, 0.1, 0.8], (2, 2): [0.3, 0.4, 0.3]},
                 {(0,): 0.3, (1, 0): 0.2, (1, 1, 2): 0.5},
                 lambda y: float(y[-1] == 2) - 0.5 * float(len(y) == 1))
  tree, _ = build_tree([p, p], [0.4, 0.6], 0.8)
  rng = np.random.default_rng(0)
  theta = tuple(t + rng.normal(0.0, 1.0, t.shape) for t in initial_logits(tree))
  return tree, theta


@pytest.mark.parametrize("fn, cfg", [
    (group_rl.group_rl_field, group_rl.DAPO.config),
    (group_rl.group_rl_field, group_rl.GRPO.config),
    (hpt.tree_hpt_field, hpt.TREE_HPT.config),
])
def test_an_eager_call_is_the_uncompiled_code_with_the_count_read_from_the_tree(fn, cfg):
  tree, theta = _tree()
  got = fn(tree, theta, cfg)
  want = fn.__wrapped__(tree, theta, cfg)  # the function's own code, op by op
  for g, w in zip(got, want):
    assert_close(g, w)
  assert inspect.isfunction(fn) and fn.__doc__ == fn.__wrapped__.__doc__
  assert fn.__module__ == fn.__wrapped__.__module__


def test_the_count_is_read_eagerly_and_asked_for_under_another_trace():
  tree, theta = _tree()
  cfg = group_rl.DAPO.config
  assert cfg.levels is None
  filled = group_rl.fill_levels(tree, cfg)
  eager = group_rl.group_rl_field(tree, theta, cfg)
  for a, b in zip(eager, group_rl.group_rl_field(tree, theta, filled)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="levels is None on a traced tree"):
    jax.jit(group_rl.group_rl_field, static_argnums=2)(tree, theta, cfg)
  traced = jax.jit(group_rl.group_rl_field, static_argnums=2)(tree, theta, filled)
  for a, b in zip(traced, eager):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

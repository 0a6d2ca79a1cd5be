r"""Sampling responses from a tree policy, and the sampled estimators' pull-back to the logits.

A trainer draws responses y ~ π(·|x) and forms Σ_i Σ_t c_{i,t} ∇_θ log π(y_{i,t} | y_{i,<t}).
Here a batch of draws is a histogram on the flat leaf axis (:func:`leaf_histogram`); a
coefficient that is a leaf factor f_i times an edge factor g(s, a) sums, on every edge, to
g(s, a) · Σ_{i below s·a} f_i (:func:`subtree_totals`); and Σ_edges C(s, a) ∇_θ log π(a|s) is, at
node s, C(s, ·) − (Σ_a C(s, a)) π(·|s) (:func:`pullback`). Every step is level by level: the
cost grows with the number of nodes plus the number of draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .atomic import leaf_policy, unflat_slots
from .instance import TreeInstance, support
from .policy import Levels, gather_rows

__all__ = ["sample_leaves", "leaf_histogram", "subtree_totals", "pullback"]


def sample_leaves(tree: TreeInstance, log_pi: Levels, key: jax.Array, n: int) -> jax.Array:
  r"""n responses per prompt drawn from π(y|x) = Π_t π(y_t|y_<t), as flat leaf-slot indices.

  Args:
    tree: the tree [X prompts].
    log_pi: per-level log-policy [X, N_t, k].
    key: PRNG key.
    n: draws per prompt.

  Returns:
    [X, n] int indices into the flat slot axis of :func:`~.policy.flat_slots` (always leaf slots).

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> idx = sample_leaves(tree, reference_log_probs(tree), jax.random.PRNGKey(0), 4000)
    >>> [abs(float((idx == j).mean()) - p) < 0.03 for j, p in ((0, 0.5), (2, 0.25), (3, 0.25))]
    [True, True, True]
  """
  logits = leaf_policy(tree, log_pi)
  return jax.random.categorical(key, logits, axis=-1, shape=(n, logits.shape[0])).T


def leaf_histogram(tree: TreeInstance, idx: jax.Array, weights: jax.Array | None = None
                   ) -> Levels:
  r"""Per level [X, N_t, k] the sum of ``weights`` over the draws that ended at each leaf slot.

  Args:
    tree: the tree.
    idx: [X, n] flat leaf-slot indices (from :func:`sample_leaves`).
    weights: [X, n] a factor per draw (default 1).

  Returns:
    per level [X, N_t, k]: Σ_i weights_i 1[y_i = s·a].

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [h.tolist() for h in leaf_histogram(tree, jnp.array([[0, 3, 3]]))]
    [[[[1.0, 0.0]]], [[[0.0, 2.0]]]]
  """
  n_x, n = idx.shape
  width = sum(lv.reference.shape[-2] * lv.reference.shape[-1] for lv in tree.levels)
  w = jnp.ones((n_x, n), tree.prompt_weights.dtype) if weights is None else weights
  flat = jnp.zeros((n_x, width), w.dtype).at[jnp.arange(n_x)[:, None], idx].add(w)
  return unflat_slots(tree, flat)


def subtree_totals(tree: TreeInstance, leaf_values: Levels) -> Levels:
  r"""Per edge (s, a) the total of ``leaf_values`` over the leaves at or below s·a, bottom-up.

  Args:
    tree: the tree.
    leaf_values: per level [X, N_t, k], read on leaf slots.

  Returns:
    per level [X, N_t, k]: on a leaf slot its value, on an internal slot the sum over its child
    row, 0 off the support.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [a.tolist() for a in subtree_totals(tree, leaf_histogram(tree, jnp.array([[0, 3, 3, 2]])))]
    [[[[1.0, 3.0]]], [[[1.0, 2.0]]]]
  """
  out = [None] * len(tree.levels)
  below = None
  for t in reversed(range(len(tree.levels))):
    lv = tree.levels[t]
    go = jnp.where(lv.leaf, leaf_values[t], 0.0)
    if below is not None:
      go = jnp.where(lv.internal, gather_rows(below, lv.child), go)
    out[t] = jnp.where(support(lv), go, 0.0)
    below = jnp.sum(out[t], axis=-1)
  return tuple(out)


def pullback(tree: TreeInstance, log_pi: Levels, edge_coeff: Levels, pi: Levels | None = None
             ) -> Levels:
  r"""Σ_{(s,a)} C(s, a) ∇_θ log π(a|s): at node s, C(s, ·) − (Σ_a C(s, a)) π(·|s).

  Args:
    tree: the tree.
    log_pi: per-level log-policy [X, N_t, k].
    edge_coeff: per level [X, N_t, k] C(s, a).
    pi: per-level π(a|s) when the caller has it (0 off the support; no exp of log_pi then).

  Returns:
    per level [X, N_t, k] the logit gradient (0 off the support and on padded rows).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.25, 0.75]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pullback(tree, reference_log_probs(tree), (jnp.array([[[1.0, 0.0]]]),))[0].tolist()
    [[[0.75, -0.75]]]
  """
  out = []
  probs = (None,) * len(tree.levels) if pi is None else pi
  for lv, lp, c, p in zip(tree.levels, log_pi, edge_coeff, probs):
    sup = support(lv)
    c = jnp.where(sup, c, 0.0)
    p = jnp.where(sup, jnp.exp(lp), 0.0) if p is None else p
    g = c - jnp.sum(c, axis=-1, keepdims=True) * p
    out.append(jnp.where(sup & lv.node[..., None], g, 0.0))
  return tuple(out)

r"""Autoregressive tabular policies on trees: per-node softmax, reach, sequence probabilities.

A policy is given per level as log-probabilities ``log_pi[t]`` [X, N_t, k] (−∞ on absent slots and
padded rows), or as logits ``theta[t]`` of the same shapes (entries off the support are inert):

.. math:: \pi(a|x,s) = \mathrm{softmax}(\theta_{x,s})_a,\qquad
          P_\pi(s\cdot a) = P_\pi(s)\,\pi(a|s),\qquad \pi(y|x) = \prod_t \pi(y_t|x,y_{<t}).

Reach probabilities P_π(s) are computed top-down (one gather of the parent per level) and leaf
(sequence) probabilities as P_π(s)π(a|s) on leaf slots, all in log space. A distribution on the
leaves converts back to per-node conditionals bottom-up (:func:`conditionals_from_leaf_masses`):
π(a|s) = M(s·a)/M(s) with M(s) the mass of the leaves below s. Every function takes a
:class:`~nondecoupling.theory.tree.instance.TreeInstance` with a prompt axis and is vmap-able over
instances; gathers use ``take_along_axis`` along the row axis, so no sequence is ever enumerated.

References: THEORY.md part G (setting, chain rule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import NEG_INF, safe_log
from .instance import TreeInstance, support

__all__ = ["gather_rows", "gather_slots", "node_log_softmax", "node_log_softmax_and_probs",
           "policy_log_probs_and_probs", "reach_and_leaf_probs", "policy_log_probs", "initial_logits", "logits_of",
           "reference_log_probs", "log_reach", "leaf_log_probs", "conditionals_from_leaf_masses",
           "flat_slots", "leaf_mask", "leaf_lengths", "Levels"]

Levels = tuple  # one array per level


def gather_rows(values: jax.Array, idx: jax.Array) -> jax.Array:
  """values[..., idx] along the row axis: values [X, M], idx [X, ...] -> [X, ...].

  Examples:
    >>> import jax.numpy as jnp
    >>> gather_rows(jnp.array([[10., 20., 30.]]), jnp.array([[[2, 0]]])).tolist()
    [[[30.0, 10.0]]]
  """
  lead = idx.shape[: values.ndim - 1]
  flat = idx.reshape(lead + (-1,))
  return jnp.take_along_axis(values, flat, axis=-1).reshape(idx.shape)


def node_log_softmax(theta: jax.Array, sup: jax.Array) -> jax.Array:
  r"""log softmax over the slots of each row restricted to the support (−∞ elsewhere).

  .. math:: \log\pi(a|s) = \theta_{s,a} - \log\sum_{a' \in \mathrm{supp}(s)} e^{\theta_{s,a'}}

  Rows without any slot (padding) are −∞ everywhere; gradients stay finite.

  Args:
    theta: [..., N, k] logits.
    sup: [..., N, k] bool support.

  Returns:
    [..., N, k] log-probabilities.

  Examples:
    >>> import jax.numpy as jnp
    >>> lp = node_log_softmax(jnp.zeros((2, 3)), jnp.array([[True, True, False], [False] * 3]))
    >>> jnp.exp(lp).tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
  """
  any_slot = jnp.any(sup, axis=-1, keepdims=True)
  masked = jnp.where(sup, theta, NEG_INF)
  lse = jax.nn.logsumexp(jnp.where(any_slot, masked, 0.0), axis=-1, keepdims=True)
  return jnp.where(sup, theta - lse, NEG_INF)


def node_log_softmax_and_probs(theta: jax.Array, sup: jax.Array) -> tuple[jax.Array, jax.Array]:
  r""":func:`node_log_softmax` and its exponential from one exp pass: (log π, π).

  .. math:: e_a = e^{\theta_{s,a} - m_s},\qquad \pi(a|s) = e_a / \textstyle\sum_b e_b,\qquad
            \log\pi(a|s) = \theta_{s,a} - m_s - \log\textstyle\sum_b e_b

  (m_s the row's largest logit on the support). Padded rows: (−∞, 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> lp, p = node_log_softmax_and_probs(jnp.zeros((2, 3)),
    ...                                    jnp.array([[True, True, False], [False] * 3]))
    >>> p.tolist(), jnp.exp(lp).tolist()
    ([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
  """
  any_slot = jnp.any(sup, axis=-1, keepdims=True)
  top = jnp.max(jnp.where(sup, theta, NEG_INF), axis=-1, keepdims=True)
  top = jnp.where(any_slot, top, 0.0)
  shifted = jnp.where(sup, theta - top, NEG_INF)
  e = jnp.exp(shifted)
  total = jnp.where(any_slot, jnp.sum(e, axis=-1, keepdims=True), 1.0)
  return jnp.where(sup, shifted - jnp.log(total), NEG_INF), e / total


def policy_log_probs_and_probs(tree: TreeInstance, theta: Levels) -> tuple[Levels, Levels]:
  """Per level (log π(a|s), π(a|s)) of per-level logits from one exp pass (0 off the support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.25, 0.75]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_pi, pi = policy_log_probs_and_probs(tree, (jnp.array([[[0.0, jnp.log(3.0)]]]),))
    >>> pi[0].round(12).tolist()
    [[[0.25, 0.75]]]
  """
  pairs = [node_log_softmax_and_probs(th, support(lv)) for th, lv in zip(theta, tree.levels)]
  return tuple(a for a, _ in pairs), tuple(b for _, b in pairs)


def reach_and_leaf_probs(tree: TreeInstance, pi: Levels) -> tuple[Levels, Levels]:
  r"""Per level P_π(s) [X, N_t] (top-down products of conditionals, no exp) and the leaf
  probabilities π(y) = P_π(s) π(a|s) on the leaf slots [X, N_t, k] (0 elsewhere).

  Products of conditionals in [0, 1] lose no precision against the exp of a log-space sum; a
  probability below the smallest float64 is 0 either way.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> reach, leaf = reach_and_leaf_probs(tree, tuple(lv.reference for lv in tree.levels))
    >>> [r.tolist() for r in reach], [a.tolist() for a in leaf]
    ([[[1.0]], [[0.5]]], [[[[0.5, 0.0]]], [[[0.25, 0.25]]]])
  """
  reach = [jnp.where(tree.levels[0].node, 1.0, 0.0).astype(pi[0].dtype)]
  for t in range(1, len(tree.levels)):
    lv = tree.levels[t]
    step = gather_slots(pi[t - 1], lv.parent, lv.token)
    reach.append(jnp.where(lv.node, gather_rows(reach[-1], lv.parent) * step, 0.0))
  leaf = tuple(jnp.where(lv.leaf, r[..., None] * p, 0.0)
               for lv, r, p in zip(tree.levels, reach, pi))
  return tuple(reach), leaf


def policy_log_probs(tree: TreeInstance, theta: Levels) -> Levels:
  """The tabular policy softmax(θ_{x,s}) of per-level logits, as per-level log-probabilities.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> theta = (jnp.array([[[0.0, jnp.log(3.0)]]]), jnp.zeros((1, 1, 2)))  # root, node (1,)
    >>> [jnp.exp(lp).round(6).tolist() for lp in policy_log_probs(tree, theta)]  # softmax per node
    [[[[0.25, 0.75]]], [[[0.5, 0.5]]]]
  """
  return tuple(node_log_softmax(th, support(lv)) for th, lv in zip(theta, tree.levels))


def reference_log_probs(tree: TreeInstance) -> Levels:
  """log ρ(a|s) per level (−∞ off the support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [jnp.exp(lp).tolist() for lp in reference_log_probs(tree)]  # ρ(·|root), ρ(·|(1,))
    [[[[0.5, 0.5]]], [[[0.5, 0.5]]]]
  """
  return tuple(safe_log(lv.reference) for lv in tree.levels)


def initial_logits(tree: TreeInstance) -> Levels:
  """θ₀ = log ρ on the support, 0 elsewhere (finite; softmax(θ₀) = ρ).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> # softmax(θ₀) = ρ
    >>> [jnp.exp(lp).tolist() for lp in policy_log_probs(tree, initial_logits(tree))]
    [[[[0.5, 0.5]]], [[[0.5, 0.5]]]]
  """
  return tuple(jnp.where(support(lv), jnp.log(jnp.where(support(lv), lv.reference, 1.0)), 0.0)
               for lv in tree.levels)


def logits_of(tree: TreeInstance, log_pi: Levels) -> Levels:
  """Finite logits of a policy: log π on the support (−745 where π = 0), 0 elsewhere.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.objectives import data_log_policy
    >>> [t.round(6).tolist() for t in logits_of(tree, data_log_policy(tree))]  # d(0 | (1,)) = 0
    [[[[-0.693147, -0.693147]]], [[[-745.0, 0.0]]]]
  """
  return tuple(jnp.where(support(lv) & jnp.isfinite(lp), lp, jnp.where(support(lv), -745.0, 0.0))
               for lv, lp in zip(tree.levels, log_pi))


def log_reach(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""log P_π(s) per level [X, N_t], top-down: log P(s·a) = log P(s) + log π(a|s).

  The root has P = 1; padded rows −∞.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> # P(root), P((1,))
    >>> [jnp.exp(r).tolist() for r in log_reach(tree, reference_log_probs(tree))]
    [[[1.0]], [[0.5]]]
  """
  out = [jnp.where(tree.levels[0].node, 0.0, NEG_INF).astype(log_pi[0].dtype)]
  for t in range(1, len(tree.levels)):
    lv = tree.levels[t]
    parent_lp = gather_rows(out[-1], lv.parent)
    edge = gather_slots(log_pi[t - 1], lv.parent, lv.token)
    out.append(jnp.where(lv.node, parent_lp + edge, NEG_INF))
  return tuple(out)


def gather_slots(values: jax.Array, row: jax.Array, slot: jax.Array) -> jax.Array:
  """values[..., row, slot]: entries of [X, M, k] at (row, slot) [X, N] -> [X, N].

  Examples:
    >>> import jax.numpy as jnp
    >>> gather_slots(jnp.arange(6.).reshape(1, 3, 2), jnp.array([[2, 0]]), jnp.array([[1, 0]]))
    Array([[5., 0.]], dtype=float64)
  """
  k = values.shape[-1]
  return gather_rows(values.reshape(values.shape[:-2] + (-1,)), row * k + slot)


def leaf_log_probs(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""log π(y|x) = log P_π(s) + log π(a|s) on the leaf slots y = s·a (−∞ elsewhere), per level.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> # ρ(0), ρ(1 0), ρ(1 1)
    >>> [jnp.exp(lp).tolist() for lp in leaf_log_probs(tree, reference_log_probs(tree))]
    [[[[0.5, 0.0]]], [[[0.25, 0.25]]]]
  """
  reach = log_reach(tree, log_pi)
  return tuple(jnp.where(lv.leaf, r[..., None] + lp, NEG_INF)
               for lv, r, lp in zip(tree.levels, reach, log_pi))


def conditionals_from_leaf_masses(tree: TreeInstance, log_mass: Levels,
                                  fallback: Levels | None = None) -> Levels:
  r"""Per-node conditionals of a (possibly unnormalised) mass on the leaves, bottom-up in log space.

  .. math:: \log M(s\cdot a) = \begin{cases}\log m(s\cdot a) & \text{leaf}\\
            \log\sum_b M(s\cdot a\cdot b) & \text{internal}\end{cases},\qquad
            \log\pi(a|s) = \log M(s\cdot a) - \log M(s)

  Args:
    tree: the tree.
    log_mass: per level [X, N_t, k] log m(y) on leaf slots (−∞ for zero mass; ignored elsewhere).
    fallback: per-level log rows used where M(s) = 0 (default: the reference ρ).

  Returns:
    Per-level log-conditionals [X, N_t, k] (rows of positive mass sum to 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_d = tuple(jnp.log(lv.data) for lv in tree.levels)  # d on the leaf slots
    >>> [jnp.exp(lp).tolist() for lp in conditionals_from_leaf_masses(tree, log_d)]
    [[[[0.5, 0.5]]], [[[0.0, 1.0]]]]
  """
  fallback = reference_log_probs(tree) if fallback is None else fallback
  out = [None] * len(tree.levels)
  below = None
  for t in reversed(range(len(tree.levels))):
    lv = tree.levels[t]
    edge = jnp.where(lv.leaf, log_mass[t], NEG_INF)
    if below is not None:
      edge = jnp.where(lv.internal, gather_rows(below, lv.child), edge)
    node = jax.nn.logsumexp(edge, axis=-1)
    has = jnp.isfinite(node)
    safe_node = jnp.where(has, node, 0.0)
    cond = jnp.where(support(lv), edge - safe_node[..., None], NEG_INF)
    out[t] = jnp.where(has[..., None], cond, fallback[t])
    below = jnp.where(lv.node, node, NEG_INF)
  return tuple(out)


def flat_slots(per_level: Levels) -> jax.Array:
  """Concatenates per-level slot arrays [X, N_t, k] into one slot axis [X, Σ_t N_t k].

  Leaf slots of this axis are the responses of the leaf set (see :mod:`.atomic`).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> flat_slots(tuple(lv.data for lv in tree.levels)).tolist()  # slots of level 0, then level 1
    [[0.5, 0.0, 0.0, 0.5]]
  """
  return jnp.concatenate([a.reshape(a.shape[:-2] + (-1,)) for a in per_level], axis=-1)


def leaf_mask(tree: TreeInstance) -> jax.Array:
  """[X, Σ_t N_t k] bool: the leaf slots of the flat slot axis.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> leaf_mask(tree).tolist()  # slot (1,) of the root is internal
    [[True, False, True, True]]
  """
  return flat_slots(tuple(lv.leaf for lv in tree.levels))


def leaf_lengths(tree: TreeInstance) -> Levels:
  """Per level [X, N_t, k] the length t + 1 of a leaf at that level (float).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [n.tolist() for n in leaf_lengths(tree)]
    [[[[1.0, 1.0]]], [[[2.0, 2.0]]]]
  """
  return tuple(jnp.full(lv.reference.shape, t + 1.0, lv.reference.dtype)
               for t, lv in enumerate(tree.levels))

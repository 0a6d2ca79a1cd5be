r"""Prefix and hint machinery on trees: leaf paths, rollouts that start at a node of a demonstration.

Every demonstration recipe on trees (LUFFY, SRFT, HPT, ReLIFT, UFT, Prefix-RFT, BREAD) is a sum of
per-token terms Σ_{y, t} c(y, t) (e_{y_t} − π(·|y_<t)) at the node y_<t of a leaf y, plus per-node
terms (entropy, KL) weighted by visits. This module holds the dense path form of the tree used for
that, and the rollouts that start below a prefix of a demonstration:

- :class:`Paths` (:func:`leaf_paths`): for every slot j of the flat leaf axis
  (:func:`~..policy.flat_slots`) the flat node id (:func:`flat_nodes`, levels concatenated) and the
  token at every depth t < |y_j|;
- :func:`path_pullback`: Σ_{i, t} c_{i,t} ∇ log π(y_{i,t}|y_{i,<t}) for coefficients on paths (of
  all leaves, for an exact field weighted by probabilities; or of sampled leaves, for an
  estimator), and :func:`node_pullback` for per-node rows (entropy bonus, k3-KL loss);
  :func:`leaf_pullback` and :func:`leaf_visits` for a coefficient constant along each path
  (one per leaf), bottom-up over the levels, with no (leaves × depth) array;
- sampling continuations from a start node s
  (:func:`~.continuations.sample_below`); their exact fields are level by level in :mod:`.starts`.

The path forms are dense in (leaves × depth): the estimators use them for the sampled paths (M
rollouts × T). The per-leaf forms (:func:`leaf_pullback`, :func:`leaf_visits`,
:func:`leaf_edge_totals`) and :mod:`.starts` cost linear in the nodes: every recipe's exact field
runs at the benchmark's size (k = 8, T = 5: 19,608 leaves per prompt).

References: research/fusion-methods.md Rule 4 (hints and prefixes need the step tree), §7–9.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..atomic import unflat_slots
from ..instance import TreeInstance, support
from ..policy import (
  Levels,
  flat_slots,
  leaf_mask,
  log_reach,
  policy_log_probs_and_probs,
  reach_and_leaf_probs,
)
from ..sampling import pullback, subtree_totals

__all__ = ["Paths", "leaf_paths", "flat_nodes", "node_offsets", "path_pullback", "leaf_pullback", "leaf_visits", "leaf_edge_totals", "node_pullback", "node_edges", "path_gather", "edge_log_probs", "node_entropies", "path_visits", "scale_levels", "add_levels", "entropy_rows", "entropy_edges", "policy_leaves", "pullback_with_entropy", "entropy_field", "reach_probs", "all_leaves", "leaf_data", "mean_over_calls"]


class Paths(NamedTuple):
  """Every leaf slot's path (flat leaf axis S, depth axis T).

  Attributes:
    node: [X, S, T] int32 flat node id of y_<t (0 where invalid).
    token: [X, S, T] int32 the token y_t.
    valid: [X, S, T] bool, t < |y| on a leaf slot.
    length: [X, S] int32 |y| (0 off the leaves).
  """

  node: jax.Array
  token: jax.Array
  valid: jax.Array
  length: jax.Array


def node_offsets(tree: TreeInstance) -> list[int]:
  """Start of each level on the flat node axis (levels concatenated).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> node_offsets(tree)  # root level, then the one node (1,) at depth 1
    [0, 1]
  """
  out, start = [], 0
  for lv in tree.levels:
    out.append(start)
    start += int(lv.node.shape[-1])
  return out


def flat_nodes(per_level: Levels) -> jax.Array:
  """Concatenates per-level node arrays [X, N_t] into [X, Σ_t N_t].

  Examples:
    >>> import jax.numpy as jnp
    >>> flat_nodes((jnp.array([[1.0]]), jnp.array([[2.0]]))).tolist()
    [[1.0, 2.0]]
  """
  return jnp.concatenate(list(per_level), axis=-1)


def _take_rows(values: jax.Array, idx: jax.Array) -> jax.Array:
  """values[x, idx[x, i], :] for values [X, M, T], idx [X, N] -> [X, N, T]."""
  full = jnp.broadcast_to(idx[..., None], idx.shape + values.shape[-1:])
  return jnp.take_along_axis(values, full, axis=-2)


def leaf_paths(tree: TreeInstance) -> Paths:
  """The path (flat node ids and tokens) of every slot of the flat leaf axis, top-down.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> paths.length.tolist(), paths.node[0, 3].tolist(), paths.token[0, 3].tolist()
    ([[1, 0, 2, 2]], [0, 1], [1, 1])
  """
  n_levels = len(tree.levels)
  offsets = node_offsets(tree)
  anc, tok = None, None
  nodes, tokens, valid, length = [], [], [], []
  for t, lv in enumerate(tree.levels):
    n_x, n_t, k = lv.reference.shape
    rows = offsets[t] + jnp.arange(n_t, dtype=jnp.int32)
    depth = jnp.arange(n_levels)
    d3 = depth[None, None, :]
    if t == 0:
      anc = jnp.broadcast_to(jnp.where(d3 == 0, rows[None, :, None], 0), (n_x, n_t, n_levels))
      tok = jnp.zeros((n_x, n_t, n_levels), jnp.int32)
    else:
      anc = jnp.where(d3 == t, rows[None, :, None], _take_rows(anc, lv.parent))
      tok = jnp.where(d3 == t - 1, lv.token[..., None], _take_rows(tok, lv.parent))
    anc = anc.astype(jnp.int32)
    tok = tok.astype(jnp.int32)
    d4 = depth[None, None, None, :]
    slot_tok = jnp.where(d4 == t, jnp.arange(k, dtype=jnp.int32)[None, None, :, None],
                         tok[:, :, None, :])
    is_leaf = lv.leaf[..., None] & (d4 <= t)
    nodes.append(jnp.broadcast_to(anc[:, :, None, :], (n_x, n_t, k, n_levels)))
    tokens.append(slot_tok)
    valid.append(is_leaf)
    length.append(jnp.where(lv.leaf, t + 1, 0).astype(jnp.int32))
  cat = lambda arrs: jnp.concatenate([a.reshape(a.shape[0], -1, n_levels) for a in arrs], axis=1)
  return Paths(node=cat(nodes), token=cat(tokens), valid=cat(valid),
               length=flat_slots(tuple(length)))


def path_gather(paths: Paths, node_values: jax.Array) -> jax.Array:
  """[X, S, T] node_values[x, y_<t] along every path (0 where invalid); node_values [X, Nn].

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> path_gather(paths, jnp.array([[10.0, 20.0]])).tolist()  # root 10, node (1,) 20
    [[[10.0, 0.0], [0.0, 0.0], [10.0, 20.0], [10.0, 20.0]]]
  """
  got = jnp.take_along_axis(node_values, paths.node.reshape(paths.node.shape[0], -1), axis=-1)
  return jnp.where(paths.valid, got.reshape(paths.node.shape), 0.0)


def edge_log_probs(tree: TreeInstance, log_pi: Levels, paths: Paths) -> jax.Array:
  """[X, S, T] log π(y_t | y_<t) along every path (0 where invalid).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> jnp.exp(edge_log_probs(tree, log_pi, paths)).round(6).tolist()
    [[[0.5, 1.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]]
  """
  k = tree.vocab_size
  flat = jnp.concatenate([lp.reshape(lp.shape[0], -1) for lp in log_pi], axis=-1)
  ids = (paths.node * k + paths.token).reshape(paths.node.shape[0], -1)
  got = jnp.take_along_axis(flat, ids, axis=-1).reshape(paths.node.shape)
  return jnp.where(paths.valid, got, 0.0)


def node_entropies(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  """[X, Nn] H(π(·|s)) of every node on the flat node axis (0 on padded rows).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> node_entropies(tree, log_pi).round(6).tolist()  # log 2 at both nodes
    [[0.693147, 0.693147]]
  """
  out = []
  for lv, lp in zip(tree.levels, log_pi):
    sup = support(lv)
    p = jnp.where(sup, jnp.exp(lp), 0.0)
    out.append(-jnp.sum(jnp.where(sup & (p > 0), p * jnp.where(sup, lp, 0.0), 0.0), axis=-1))
  return flat_nodes(tuple(out))


def _edges_to_levels(tree: TreeInstance, flat: jax.Array) -> Levels:
  """[X, Nn k] edge values -> per-level [X, N_t, k]."""
  out, start = [], 0
  for lv in tree.levels:
    shape = lv.reference.shape
    size = shape[-2] * shape[-1]
    out.append(flat[:, start:start + size].reshape(shape))
    start += size
  return tuple(out)


def path_pullback(tree: TreeInstance, log_pi: Levels, paths: Paths, idx: jax.Array,
                  coef: jax.Array) -> Levels:
  r"""Σ_{i, t} c_{i,t} ∇_θ log π(y_{i,t} | y_{i,<t}) for leaves y_i = idx[:, i] (per level).

  Args:
    tree: the tree; log_pi: per-level log-policy; paths: :func:`leaf_paths`.
    idx: [X, M] flat leaf-slot indices (e.g. every leaf, or sampled draws).
    coef: [X, M, T] coefficient of the token at depth t of y_i (ignored where t ≥ |y_i|).

  Returns:
    per level [X, N_t, k] the logit gradient.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> paths = leaf_paths(tree)
    >>> g = path_pullback(tree, log_pi, paths, jnp.array([[3]]), jnp.ones((1, 1, 2)))
    >>> [a.round(6).tolist() for a in g]  # ∇ log π((1, 1)): e_1 − π at both nodes
    [[[[-0.5, 0.5]]], [[[-0.5, 0.5]]]]
  """
  n_x, m = idx.shape
  t_max = paths.node.shape[-1]
  take = lambda a: _take_rows(a, idx)
  node, token, valid = take(paths.node), take(paths.token), take(paths.valid)
  k = tree.vocab_size
  n_edges = sum(int(lv.reference.shape[-2]) for lv in tree.levels) * k
  ids = (node * k + token).reshape(n_x, m * t_max)
  vals = jnp.where(valid, coef, 0.0).reshape(n_x, m * t_max)
  flat = jnp.zeros((n_x, n_edges), vals.dtype).at[jnp.arange(n_x)[:, None], ids].add(vals)
  return pullback(tree, log_pi, _edges_to_levels(tree, flat))


def leaf_pullback(tree: TreeInstance, log_pi: Levels, per_leaf: jax.Array) -> Levels:
  r"""Σ_y c(y) Σ_t ∇_θ log π(y_t | y_<t) for one coefficient per leaf, level by level.

  At an edge (s, a) the coefficient is the total of c over the leaves at or below s·a
  (:func:`~..sampling.subtree_totals`), then :func:`~..sampling.pullback`: cost linear in the
  nodes. Equal to :func:`path_pullback` over every leaf with c(y) at each of its tokens.

  Args:
    tree: the tree; log_pi: per-level log-policy.
    per_leaf: [X, S] c(y) on the flat slot axis (read on leaf slots only).

  Returns:
    per level [X, N_t, k] the logit gradient.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> g = leaf_pullback(tree, log_pi, jnp.array([[0.0, 0.0, 0.0, 1.0]]))  # ∇ log π((1, 1))
    >>> [a.round(6).tolist() for a in g]
    [[[[-0.5, 0.5]]], [[[-0.5, 0.5]]]]
  """
  return pullback(tree, log_pi, leaf_edge_totals(tree, per_leaf))


def leaf_visits(tree: TreeInstance, per_leaf: jax.Array) -> jax.Array:
  """[X, Nn] Σ_{y through s} c(y) at every node s, bottom-up (:func:`path_visits` of every leaf
  with c(y) at each depth of its path).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> leaf_visits(tree, jnp.array([[0.5, 0.0, 0.25, 0.25]])).tolist()  # root, node (1,)
    [[1.0, 0.5]]
  """
  return flat_nodes(tuple(jnp.sum(s, axis=-1) for s in leaf_edge_totals(tree, per_leaf)))


def leaf_edge_totals(tree: TreeInstance, per_leaf: jax.Array) -> Levels:
  """Per level [X, N_t, k] Σ_{y at or below s·a} c(y) for a coefficient per leaf [X, S] (flat
  slot axis): the edge coefficients of Σ_y c(y) Σ_t f(s_t, y_t) ∇ log π(y_t|s_t) for any per-edge
  factor f, multiplied in before :func:`~..sampling.pullback` (LUFFY's token shaping).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [a.tolist() for a in leaf_edge_totals(tree, jnp.array([[0.5, 0.0, 0.25, 0.25]]))]
    [[[[0.5, 0.5]]], [[[0.25, 0.25]]]]
  """
  return subtree_totals(tree, unflat_slots(tree, per_leaf))


def path_visits(tree: TreeInstance, paths: Paths, idx: jax.Array, weight: jax.Array) -> jax.Array:
  """[X, Nn] Σ_i weight_{i,t} over the nodes y_{i,<t} the paths of leaves idx pass through.

  Args:
    idx: [X, M] flat leaf-slot indices; weight: [X, M, T] per depth (ignored where invalid).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> path_visits(tree, paths, jnp.array([[3]]), jnp.ones((1, 1, 2))).tolist()  # leaf (1, 1)
    [[1.0, 1.0]]
  """
  n_x, m = idx.shape
  t_max = paths.node.shape[-1]
  node = _take_rows(paths.node, idx).reshape(n_x, m * t_max)
  vals = jnp.where(_take_rows(paths.valid, idx), weight, 0.0).reshape(n_x, m * t_max)
  n_nodes = sum(int(lv.node.shape[-1]) for lv in tree.levels)
  return jnp.zeros((n_x, n_nodes), vals.dtype).at[jnp.arange(n_x)[:, None], node].add(vals)


def node_pullback(tree: TreeInstance, log_pi: Levels, visits: jax.Array, rows: Levels) -> Levels:
  r"""Σ_s v(s) Σ_a R(s, a) (e_a − π(·|s)) for node weights v [X, Nn] and per-level rows R.

  With R = −π log π this is Σ_s v(s) ∇H(π(·|s)) (the entropy bonus of the visited nodes); with
  R = ρ it is Σ_s v(s)(ρ(·|s) − π(·|s)) (ascent of the k3-KL loss, THEORY.md G3).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> rho = tuple(lv.reference for lv in tree.levels)
    >>> g = node_pullback(tree, log_pi, jnp.array([[1.0, 0.0]]), rho)
    >>> [a.round(6).tolist() for a in g]  # ρ − π = 0 at θ₀
    [[[[0.0, 0.0]]], [[[0.0, 0.0]]]]
  """
  return pullback(tree, log_pi, node_edges(tree, visits, rows))


def node_edges(tree: TreeInstance, visits: jax.Array, rows: Levels) -> Levels:
  """Per level [X, N_t, k] v(s) R(s, a) (0 off the support): the edge coefficients whose
  :func:`~..sampling.pullback` is :func:`node_pullback`, to add to other coefficients before one
  pullback (the pullback is linear in them).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> rho = tuple(lv.reference for lv in tree.levels)
    >>> [a.tolist() for a in node_edges(tree, jnp.array([[1.0, 0.5]]), rho)]
    [[[[0.5, 0.5]]], [[[0.25, 0.25]]]]
  """
  out, start = [], 0
  for lv, r in zip(tree.levels, rows):
    n_t = lv.node.shape[-1]
    out.append(visits[:, start:start + n_t, None] * jnp.where(support(lv), r, 0.0))
    start += n_t
  return tuple(out)


def scale_levels(c, levels: Levels) -> Levels:
  """c · field, per level.

  Examples:
    >>> import jax.numpy as jnp
    >>> [a.tolist() for a in scale_levels(2.0, (jnp.array([1.0]), jnp.array([3.0])))]
    [[2.0], [6.0]]
  """
  return tuple(c * a for a in levels)


def add_levels(*fields: Levels) -> Levels:
  """The sum of per-level fields.

  Examples:
    >>> import jax.numpy as jnp
    >>> [a.tolist() for a in add_levels((jnp.array([1.0]),), (jnp.array([3.0]),))]
    [[4.0]]
  """
  return tuple(sum(parts) for parts in zip(*fields))



def entropy_rows(tree: TreeInstance, log_pi: Levels) -> Levels:
  """Per level −π log π (0 off the support): the rows R of ∇H = Σ_a R_a (e_a − π).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> [a.round(6).tolist() for a in entropy_rows(tree, log_pi)]  # (1/2) log 2
    [[[[0.346574, 0.346574]]], [[[0.346574, 0.346574]]]]
  """
  return tuple(jnp.where(support(lv) & jnp.isfinite(lp), -jnp.exp(lp) * lp, 0.0)
               for lv, lp in zip(tree.levels, log_pi))


def entropy_edges(tree: TreeInstance, log_pi: Levels, pi: Levels, visits: jax.Array) -> Levels:
  r"""Per level [X, N_t, k] v(s) (−π log π)(s, a): the edge coefficients whose
  :func:`~..sampling.pullback` is :func:`entropy_field` (Σ_s v(s) ∇H_s), with π given (no exp),
  to add to other coefficients before one pullback.

  Args:
    tree: the tree; log_pi, pi: per-level log π and π; visits: [X, Nn] v(s) on the flat node axis.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pi = (jnp.array([[[0.5, 0.5]]]),)
    >>> [a.round(6).tolist() for a in entropy_edges(tree, (jnp.log(pi[0]),), pi, jnp.ones((1, 1)))]
    [[[[0.346574, 0.346574]]]]
  """
  rows = tuple(jnp.where(p > 0, -p * lp, 0.0) for lp, p in zip(log_pi, pi))
  return node_edges(tree, visits, rows)


def pullback_with_entropy(tree: TreeInstance, log_pi: Levels, pi: Levels, edges: Levels,
                          visits: jax.Array) -> Levels:
  r"""Σ_{(s,a)} C(s, a) ∇log π(a|s) + Σ_s v(s) ∇H_s in one pullback, π given (no exp).

  Args:
    tree: the tree; log_pi, pi: per-level log π and π; edges: per level C [X, N_t, k];
    visits: [X, Nn] v(s) (the entropy coefficient included).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.25, 0.75]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pi = (jnp.array([[[0.25, 0.75]]]),)
    >>> g = pullback_with_entropy(tree, (jnp.log(pi[0]),), pi, (jnp.array([[[1.0, 0.0]]]),),
    ...                           jnp.zeros((1, 1)))
    >>> g[0].tolist()  # ∇ log π(0) = e_0 − π
    [[[0.75, -0.75]]]
  """
  return pullback(tree, log_pi, add_levels(edges, entropy_edges(tree, log_pi, pi, visits)), pi=pi)


def policy_leaves(tree: TreeInstance, theta: Levels):
  """(log π, π per level, P_π(s) [X, Nn], π(y) [X, S] on the flat leaf axis) from one exp pass
  (:func:`~..policy.policy_log_probs_and_probs`, :func:`~..policy.reach_and_leaf_probs`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> _, _, reach, leaves = policy_leaves(tree, initial_logits(tree))
    >>> reach.tolist(), leaves.tolist()
    ([[1.0, 0.5]], [[0.5, 0.0, 0.25, 0.25]])
  """
  log_pi, probs = policy_log_probs_and_probs(tree, theta)
  reach, leaves = reach_and_leaf_probs(tree, probs)
  return log_pi, probs, flat_nodes(reach), flat_slots(leaves)


def entropy_field(tree: TreeInstance, log_pi: Levels, visits: jax.Array) -> Levels:
  r"""Σ_s v(s) ∇_{θ_s} H(π(·|s)): the entropy bonus of the nodes a response visits (samples held
  fixed; with v = P_π the expected token-sum bonus of one on-policy response).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> g = entropy_field(tree, log_pi, reach_probs(tree, log_pi))
    >>> [a.round(6).tolist() for a in g]  # the uniform policy maximises H
    [[[[0.0, 0.0]]], [[[0.0, 0.0]]]]
  """
  return node_pullback(tree, log_pi, visits, entropy_rows(tree, log_pi))


def reach_probs(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  """[X, Nn] P_π(s) on the flat node axis.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))  # uniform π
    >>> reach_probs(tree, log_pi).tolist()  # P_π(root), P_π((1,))
    [[1.0, 0.5]]
  """
  return jnp.exp(flat_nodes(log_reach(tree, log_pi)))


def all_leaves(paths: Paths) -> jax.Array:
  """[X, S] every flat leaf-slot index (for exact fields through :func:`path_pullback`).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> paths = leaf_paths(tree)
    >>> all_leaves(paths).tolist()
    [[0, 1, 2, 3]]
  """
  n_x, s = paths.length.shape
  return jnp.broadcast_to(jnp.arange(s)[None, :], (n_x, s))


def leaf_data(tree: TreeInstance) -> jax.Array:
  """[X, S] d(y|x) on the flat leaf axis.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...            lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); r = 1 on (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> leaf_data(tree).tolist()  # d((0,)) = d((1, 1)) = 1/2
    [[0.5, 0.0, 0.0, 0.5]]
  """
  return jnp.where(leaf_mask(tree), flat_slots(tuple(lv.data for lv in tree.levels)), 0.0)


def mean_over_calls(one_call, key: jax.Array, n: int) -> Levels:
  """The mean of ``one_call(key_i)`` over n independent keys (vmapped).

  Examples:
    >>> import jax
    >>> out = mean_over_calls(lambda k: (jax.random.bernoulli(k, 0.5, (2,)) * 0.0 + 1.0,),
    ...                       jax.random.PRNGKey(0), 3)
    >>> [a.tolist() for a in out]
    [[1.0, 1.0]]
  """
  out = jax.vmap(one_call)(jax.random.split(key, n))
  return tuple(jnp.mean(a, axis=0) for a in out)

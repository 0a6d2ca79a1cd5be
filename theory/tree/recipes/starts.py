r"""Rollouts that start at nodes of a tree, level by level: cost linear in the nodes.

UFT and BREAD draw groups of continuations below start nodes s (a hint's end, an expert anchor)
with a law ω over the nodes, and train them with a group advantage that depends on the start node
and on the continuation's reward only: W(s, y) = A(s, ℓ(y)) for the reward level ℓ(y). Their exact
field is then

.. math:: \sum_s \omega(s)\,\mathbb{E}_{y\sim\pi(\cdot|s)}\big[A(s, \ell(y))\,
          \nabla\log\pi(y|s)\big] = \sum_{(s', a)} C(s', a)\,(e_a - \pi(\cdot|s')),\qquad
          C(s', a) = \pi(a|s') \sum_\ell B_\ell(s')\, m_\ell(s'\cdot a)

with m_ℓ(u) = π(ℓ(y) = ℓ | u) the conditional level masses below u (bottom-up: a leaf slot is its
level's indicator, a node the π-mixture of its slots) and B_ℓ(s') = Σ_{s ≤ s'} ω(s) π(s'|s)
A(s, ℓ) over the ancestors s of s' (top-down: B(s·a) = π(a|s) B(s) + ω(s·a) A(s·a)). The expected
visits V(u) = Σ_{s ≤ u} ω(s) π(u|s) follow the same recursion without A. The group advantage of a
start node is the atomic group expectation of :mod:`...recipes.groups` on a row of one "response"
per reward level with probabilities m(s): [nodes × levels], not [nodes × leaves] as
the dense form the tests use as the reference (tests/continuation_reference.py).

Everything is in probability space along the edges (products of conditionals π(a|s) ≤ 1, no
division by a reach probability), so nothing cancels and a node that π rarely reaches keeps its
conditional quantities exact.

References: THEORY.md part G; fusion-methods.md §7 (UFT), §8 (BREAD).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...instance import Instance
from ...recipes.groups import (
  enumerated_advantage,
  gated_mean_advantage,
  group_levels,
  mean_group_advantage,
)
from ..atomic import unflat_slots
from ..instance import TreeInstance, support
from ..policy import Levels, gather_slots, leaf_mask
from .continuations import leaf_rewards

__all__ = ["leaf_reward_levels", "level_indicators", "below_expectations", "length_masses",
           "node_rows", "split_node_rows", "level_group_advantage", "start_advantages", "started_coefficients"]


def _child_rows(values: jax.Array, child: jax.Array) -> jax.Array:
  """values[x, child[x, n, a], :] for node values [X, M, J] and child rows [X, N, k] -> [X, N, k, J]."""
  n_x, n, k = child.shape
  idx = jnp.broadcast_to(child.reshape(n_x, n * k, 1), (n_x, n * k, values.shape[-1]))
  return jnp.take_along_axis(values, idx, axis=1).reshape(n_x, n, k, values.shape[-1])


def _parent_rows(values: jax.Array, parent: jax.Array) -> jax.Array:
  """values[x, parent[x, n], :] for node values [X, M, J] and parent rows [X, N] -> [X, N, J]."""
  idx = jnp.broadcast_to(parent[..., None], parent.shape + values.shape[-1:])
  return jnp.take_along_axis(values, idx, axis=1)


def leaf_reward_levels(tree: TreeInstance, levels: int):
  """The distinct rewards of each prompt's leaves and every leaf's level.

  Args:
    tree: the tree; levels: L ≥ the largest number of distinct leaf rewards of a prompt (static).

  Returns:
    (level_of [X, S] int on the flat slot axis, values [X, L] in increasing order, used [X, L]).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> level_of, values, used = leaf_reward_levels(tree, 2)
    >>> level_of.tolist(), values.tolist(), used.tolist()
    ([[0, 0, 0, 1]], [[0.0, 1.0]], [[True, True]])
  """
  r = leaf_rewards(tree)
  level_of, values, _, used = jax.vmap(
      lambda rr, ss: group_levels(rr, jnp.zeros_like(rr), ss, levels))(r, leaf_mask(tree))
  return level_of, values, used


def level_indicators(tree: TreeInstance, level_of: jax.Array, levels: int) -> Levels:
  """Per level [X, N_t, k, L] 1[ℓ(y) = ℓ] on the leaf slots (0 elsewhere).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(0,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> level_indicators(tree, jnp.array([[0, 1]]), 2)[0].tolist()
    [[[[1.0, 0.0], [0.0, 1.0]]]]
  """
  dtype = tree.levels[0].reference.dtype
  return tuple(jnp.where(lv.leaf[..., None], (lo[..., None] == jnp.arange(levels).reshape(1, 1, 1, -1)).astype(dtype),
                         0.0)
               for lv, lo in zip(tree.levels, unflat_slots(tree, level_of)))


def below_expectations(tree: TreeInstance, pi: Levels, leaf_values: Levels,
                       weighted: bool = True) -> tuple[Levels, Levels]:
  r"""Conditional expectations E_π[φ(y) | u] of per-leaf vectors below every edge and node.

  .. math:: m(s\cdot a) = \begin{cases}\varphi(s\cdot a) & \text{leaf}\\ m(\text{child})
            & \text{internal}\end{cases},\qquad m(s) = \sum_a \pi(a|s)\, m(s\cdot a)

  Args:
    tree: the tree; pi: per-level π(a|s) (:func:`~..policy.policy_log_probs_and_probs`).
    leaf_values: per level [X, N_t, k, J] φ on the leaf slots (read there only).
    weighted: False sums the slots instead (m(s) = Σ_a m(s·a): totals over the leaves below).

  Returns:
    (per-edge [X, N_t, k, J], per-node [X, N_t, J]), 0 off the support.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); uniform ρ
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pi = tuple(lv.reference for lv in tree.levels)  # π = ρ
    >>> phi = tuple(lv.reward[..., None] for lv in tree.levels)  # J = 1: the reward
    >>> edge, node = below_expectations(tree, pi, phi)
    >>> node[0].tolist(), node[1].tolist()  # E[r] = 1/4 at the root, 1/2 at (1,)
    ([[[0.25]]], [[[0.5]]])
  """
  edges, nodes = [None] * len(tree.levels), [None] * len(tree.levels)
  under = None
  for t in reversed(range(len(tree.levels))):
    lv = tree.levels[t]
    e = jnp.where(lv.leaf[..., None], leaf_values[t], 0.0)
    if under is not None:
      e = jnp.where(lv.internal[..., None], _child_rows(under, lv.child), e)
    edges[t] = e
    w = pi[t] if weighted else support(lv).astype(e.dtype)
    nodes[t] = jnp.einsum("xnk,xnkj->xnj", w, e)
    under = nodes[t]
  return tuple(edges), tuple(nodes)


def length_masses(tree: TreeInstance) -> tuple[Levels, Levels]:
  """d's mass below every edge and node by the demonstration's length: [.., T] (index L − 1).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> edge, node = length_masses(tree)
    >>> node[0].tolist(), node[1].tolist()  # root: 1/2 of length 1, 1/2 of length 2
    ([[[0.5, 0.5]]], [[[0.0, 0.5]]])
  """
  depth = len(tree.levels)
  onehot = tuple(lv.data[..., None] * jax.nn.one_hot(t, depth, dtype=lv.data.dtype).reshape(1, 1, 1, -1)
                 for t, lv in enumerate(tree.levels))
  return below_expectations(tree, None, onehot, weighted=False)


def node_rows(per_level: Levels) -> jax.Array:
  """Per-level node arrays [X, N_t, J] as one [X, Σ_t N_t, J] (levels concatenated).

  Examples:
    >>> node_rows((jnp.ones((1, 1, 2)), jnp.zeros((1, 2, 2)))).shape
    (1, 3, 2)
  """
  return jnp.concatenate(list(per_level), axis=1)


def split_node_rows(tree: TreeInstance, rows: jax.Array) -> Levels:
  """The inverse of :func:`node_rows`: [X, Σ_t N_t, J] as per-level [X, N_t, J].

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [a.tolist() for a in split_node_rows(tree, jnp.array([[[1.0], [2.0]]]))]
    [[[[1.0]]], [[[2.0]]]]
  """
  out, start = [], 0
  for lv in tree.levels:
    n_t = int(lv.node.shape[-1])
    out.append(rows[:, start:start + n_t])
    start += n_t
  return tuple(out)


def level_group_advantage(node_mass: jax.Array, values: jax.Array, used: jax.Array, group: int,
                          use_std: bool, eps: float, threshold: float, gate_low: int,
                          levels: int) -> jax.Array:
  r"""[X, Nn, L] A(s, ℓ) = E[Â 1{K ≥ gate_low} | r(y) = v_ℓ] in a group of G drawn from π(·|s).

  Each start node is a row of an atomic instance with one response per reward level (its
  probability m_ℓ(s)); the atomic group expectations of :mod:`...recipes.groups` apply.

  Args:
    node_mass: [X, Nn, L] m_ℓ(s); values, used: [X, L] the levels (:func:`leaf_reward_levels`).
    group: G ≥ 1; use_std, eps: std normalisation; threshold: success means r > threshold.
    gate_low: the group counts only when K ≥ gate_low (0: always); levels: L.

  Examples:
    >>> m = jnp.array([[[0.75, 0.25], [0.5, 0.5]]])  # two start nodes, rewards {0, 1}
    >>> a = level_group_advantage(m, jnp.array([[0.0, 1.0]]), jnp.array([[True, True]]), 2,
    ...                           False, 1e-6, 0.5, 0, 2)
    >>> a.tolist()  # (1 − 1/G)(v_ℓ − V(s))
    [[[-0.125, 0.375], [-0.25, 0.25]]]
  """
  n_x, n_nodes, _ = node_mass.shape
  shape = (n_x * n_nodes, levels)
  r = jnp.broadcast_to(values[:, None, :], node_mass.shape).reshape(shape)
  mask = jnp.broadcast_to(used[:, None, :], node_mass.shape).reshape(shape)
  rows = Instance(prompt_weights=jnp.ones((n_x * n_nodes,), node_mass.dtype),
                  data=jnp.zeros_like(r), reference=mask.astype(r.dtype), reward=r,
                  beta=jnp.ones((), r.dtype), response_mask=mask)
  q = jnp.where(mask, node_mass.reshape(shape), 0.0)
  if use_std:
    pos, neg = enumerated_advantage(rows, q, group - 1, levels, True, eps, threshold,
                                    gate=(gate_low, group))
    b = pos - neg
  elif gate_low > 0:
    b = gated_mean_advantage(rows, q, group, gate_low, threshold)
  else:
    b = mean_group_advantage(rows, q, group)
  return jnp.where(mask, b, 0.0).reshape(node_mass.shape)


def start_advantages(tree: TreeInstance, pi: Levels, levels: int, group: int, use_std: bool,
                     eps: float, threshold: float, gate_low: int):
  """The reward levels below every node and the group advantage of every start node.

  Args:
    tree: the tree; pi: per-level π(a|s); levels: L (static); the rest as
      :func:`level_group_advantage`.

  Returns:
    (per-edge level masses [X, N_t, k, L], per-node [X, N_t, L], level values [X, L], used
    [X, L], per-level advantages A(s, ℓ) [X, N_t, L]).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); uniform ρ
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pi = tuple(lv.reference for lv in tree.levels)  # π = ρ
    >>> *_, adv = start_advantages(tree, pi, 2, 2, False, 1e-6, 0.5, 0)
    >>> [a.tolist() for a in adv]  # (1 − 1/G)(v_ℓ − V(s)): V(root) = 1/4, V((1,)) = 1/2
    [[[[-0.125, 0.375]]], [[[-0.25, 0.25]]]]
  """
  level_of, values, used = leaf_reward_levels(tree, levels)
  m_edge, m_node = below_expectations(tree, pi, level_indicators(tree, level_of, levels))
  adv = level_group_advantage(node_rows(m_node), values, used, group, use_std, eps, threshold,
                              gate_low, levels)
  return m_edge, m_node, values, used, split_node_rows(tree, adv)


def started_coefficients(tree: TreeInstance, pi: Levels, omega: Levels, start_weights: Levels,
                         edge_values: Levels) -> tuple[Levels, Levels]:
  r"""Edge coefficients and expected visits of rollouts started by ω with weights A (module formula).

  Args:
    tree: the tree; pi: per-level π(a|s).
    omega: per level [X, N_t] the start law ω(s).
    start_weights: per level [X, N_t, J] A(s, ·).
    edge_values: per level [X, N_t, k, J] m(s·a) (:func:`below_expectations`).

  Returns:
    (per level [X, N_t, k] C(s, a) = π(a|s) Σ_j B_j(s) m_j(s·a), per level [X, N_t] V(s)).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1]))  # leaves (0,), (1, 0), (1, 1); uniform ρ
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pi = tuple(lv.reference for lv in tree.levels)  # π = ρ
    >>> ones = tuple(jnp.ones(lv.reference.shape + (1,)) for lv in tree.levels)
    >>> edge, _ = below_expectations(tree, pi, ones)
    >>> omega = (jnp.ones((1, 1)), jnp.zeros((1, 1)))  # start at the root, A = 1
    >>> c, visits = started_coefficients(tree, pi, omega, (jnp.ones((1, 1, 1)),) * 2, edge)
    >>> [a.tolist() for a in c], [v.tolist() for v in visits]  # C = π(a|s) P(s), V = P
    ([[[[0.5, 0.5]]], [[[0.25, 0.25]]]], [[[1.0]], [[0.5]]])
  """
  coeffs, visits = [], []
  b = v = None
  for t, lv in enumerate(tree.levels):
    own_b = omega[t][..., None] * start_weights[t]
    if t == 0:
      b, v = own_b, omega[t]
    else:
      step = gather_slots(pi[t - 1], lv.parent, lv.token)              # π(a|parent)
      b = step[..., None] * _parent_rows(b, lv.parent) + own_b
      v = step * jnp.take_along_axis(v, lv.parent, axis=1) + omega[t]
    b = jnp.where(lv.node[..., None], b, 0.0)
    v = jnp.where(lv.node, v, 0.0)
    coeffs.append(pi[t] * jnp.einsum("xnj,xnkj->xnk", b, edge_values[t]))
    visits.append(v)
  return tuple(coeffs), tuple(visits)

"""The dense (nodes × leaves) continuation forms of the start-node recipes, kept as a reference.

UFT, BREAD and Prefix-RFT once computed their exact fields from these: π(y|s) for every start node
and leaf, the group advantage of every (start node, leaf) pair by the atomic enumerations, and path
coefficients c(y, t) = Σ_{d ≤ t} ω(y_<d) π(y|y_<d) W(y_<d, y). The library now computes the same
level by level (theory/tree/recipes/starts.py); these forms are a different algorithm (log space,
per leaf and path) and serve as its reference in tests/test_tree_starts.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nondecoupling.theory.instance import Instance
from nondecoupling.theory.recipes.groups import (
  enumerated_advantage,
  gated_mean_advantage,
  mean_group_advantage,
)
from nondecoupling.theory.tree.atomic import leaf_policy
from nondecoupling.theory.tree.instance import TreeInstance
from nondecoupling.theory.tree.policy import Levels, log_reach
from nondecoupling.theory.tree.recipes.continuations import leaf_rewards, levels_for
from nondecoupling.theory.tree.recipes.hints import Paths, flat_nodes, path_visits


def below(tree: TreeInstance, paths: Paths) -> jax.Array:
  """[X, Nn, S] bool: leaf y lies below (or its path passes through) node s.

  """
  n_x, s, t_max = paths.node.shape
  n_nodes = sum(int(lv.node.shape[-1]) for lv in tree.levels)
  y = jnp.broadcast_to(jnp.arange(s)[None, :, None], paths.node.shape)
  hit = jnp.zeros((n_x, n_nodes, s), jnp.int32).at[
      jnp.arange(n_x)[:, None, None], paths.node, y].add(paths.valid.astype(jnp.int32))
  return hit > 0


def conditional_leaf_probs(tree: TreeInstance, log_pi: Levels, under: jax.Array) -> jax.Array:
  r"""[X, Nn, S] π(y | s) = π(y)/P_π(s) on the leaves below s (0 elsewhere), in log space.

  """
  leaf_lp = leaf_policy(tree, log_pi)
  reach = flat_nodes(log_reach(tree, log_pi))
  safe_reach = jnp.where(jnp.isfinite(reach), reach, 0.0)
  lq = leaf_lp[:, None, :] - safe_reach[:, :, None]
  return jnp.where(under & jnp.isfinite(reach)[:, :, None], jnp.exp(lq), 0.0)


def start_group_advantage(tree: TreeInstance, q: jax.Array, under: jax.Array, group: int,
                          use_std: bool, eps: float, threshold: float, gate_low: int,
                          levels: int | None) -> jax.Array:
  r"""[X, Nn, S] E[Â 1{K ≥ gate_low} | y] of a continuation y in a group of G drawn from π(·|s).

  Each start node s is a row of an atomic instance on the leaves below it (sampling law
  q = π(·|s)), and the atomic group expectations of :mod:`...recipes.groups` apply: without std
  (1 − 1/G)(r(y) − V(s)) (gate_low = 0) or the binomial sum over the others' successes; with std
  the enumeration of the others' reward levels. K counts successes r > threshold in the group.

  Args:
    tree: the tree; q: [X, Nn, S] :func:`conditional_leaf_probs`; under: [X, Nn, S] :func:`below`.
    group: G ≥ 1; use_std, eps: std normalisation; threshold: success means r > threshold.
    gate_low: the group counts only when K ≥ gate_low (0: always).
    levels: reward levels (:func:`levels_for`).

  """
  n_x, n_nodes, s = q.shape
  r = jnp.broadcast_to(leaf_rewards(tree)[:, None, :], q.shape).reshape(n_x * n_nodes, s)
  mask = under.reshape(n_x * n_nodes, s)
  rows = Instance(prompt_weights=jnp.ones((n_x * n_nodes,), q.dtype),
                  data=jnp.zeros_like(r), reference=mask.astype(q.dtype), reward=r,
                  beta=tree.beta, response_mask=mask)
  q_rows = q.reshape(n_x * n_nodes, s)
  if use_std:
    pos, neg = enumerated_advantage(rows, q_rows, group - 1, levels_for(tree, levels), True, eps,
                                    threshold, gate=(gate_low, group))
    b = pos - neg
  elif gate_low > 0:
    b = gated_mean_advantage(rows, q_rows, group, gate_low, threshold)
  else:
    b = mean_group_advantage(rows, q_rows, group)
  return jnp.where(under, b.reshape(q.shape), 0.0)


def continuation_coefficients(paths: Paths, omega: jax.Array, q: jax.Array, adv: jax.Array
                              ) -> jax.Array:
  r"""[X, S, T] exact path coefficients of rollouts started by a law ω on nodes.

  .. math:: c(y, t) = \sum_{d \le t} \omega(y_{<d})\, \pi(y \mid y_{<d})\, W(y_{<d}, y)

  so that Σ_y Σ_t c(y, t)(e_{y_t} − π(·|y_<t)) = Σ_s ω(s) E_{y∼π(·|s)}[W(s, y) ∇ log π(y|s)].

  Args:
    paths: :func:`leaf_paths`; omega: [X, Nn] start weights; q: [X, Nn, S] π(y|s);
    adv: [X, Nn, S] per-start leaf weight W(s, y) (e.g. :func:`start_group_advantage`).

  """
  per_start = jnp.take_along_axis(omega, paths.node.reshape(paths.node.shape[0], -1),
                                  axis=-1).reshape(paths.node.shape)
  qa = q * adv                                               # [X, Nn, S]
  n_x, s, t_max = paths.node.shape
  y = jnp.broadcast_to(jnp.arange(s)[None, :, None], paths.node.shape)
  got = qa[jnp.arange(n_x)[:, None, None], paths.node, y]    # [X, S, T]
  return jnp.cumsum(jnp.where(paths.valid, per_start * got, 0.0), axis=-1)


def continuation_visits(tree: TreeInstance, paths: Paths, omega: jax.Array, q: jax.Array
                        ) -> jax.Array:
  r"""[X, Nn] Σ_{s ≤ u} ω(s) P_π(u | s): expected visits of node u by rollouts started by ω.

  """
  ones = jnp.ones_like(q)
  mass = continuation_coefficients(paths, omega, q, ones)        # Σ_{d≤t} ω π(y|y_<d)
  n_x, s = paths.length.shape
  idx = jnp.broadcast_to(jnp.arange(s)[None, :], (n_x, s))
  return path_visits(tree, paths, idx, mass)

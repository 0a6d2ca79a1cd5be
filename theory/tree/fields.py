r"""Bottom-up expectations and exact logit fields on trees (the building blocks of every gradient).

Expectation to go. For a per-slot cost c(s, a) and a leaf value f(y), bottom-up over the levels:

.. math:: Q(s,a) = c(s,a) + \begin{cases} f(s\cdot a) & s\cdot a \text{ a leaf}\\
          V(s\cdot a) & \text{internal}\end{cases},\qquad V(s) = \sum_a \pi(a|s)\,Q(s,a),

so V(s) = E_π[Σ_{t ≥ |s|} c_t + f(y) | s] and Q(s, a) the same after s·a. With c = 0 and f = r this
is Q^π, V^π of THEORY.md G4 (V^π(root) = E_π r); with c = k1 = log π/ρ and f = 0, V(s) is the KL of
the subtree below s.

Node fields. For per-slot numbers v(s, ·), the exact field

.. math:: G_s = P_\pi(s)\, F_s\, v(s,\cdot),\qquad F_s = \mathrm{diag}(\pi(\cdot|s)) - \pi(\cdot|s)\pi(\cdot|s)^\top

is (i) with v = Q^w the score-function field E_{y∼π}[w(y) ∇_{θ_s} log π(y|x)] (REINFORCE on a
sequence weight w), and (ii) with v = ∂k/∂log π(a|s) the expected gradient E_π[Σ_t ∇ k(a_t|s_t)] of
a per-token loss with the samples held fixed. Fields here are per prompt (no prompt weight);
:func:`weighted` multiplies by w_x to give gradients of E_w-objectives.

References: THEORY.md G3-G4; research/fusion-methods.md §0 (E_{y∼q}[w ∇log π] = q⊙w − (q·w)π).
"""

from __future__ import annotations

import jax.numpy as jnp

from .._numerics import masked_dot
from ..objectives import fisher_matvec
from .instance import TreeInstance, support
from .policy import Levels, gather_rows, log_reach

__all__ = ["expected_to_go", "node_field", "reinforce_field", "weighted", "zeros_like_levels"]


def expected_to_go(tree: TreeInstance, log_pi: Levels, leaf_value: Levels,
                   edge_cost: Levels | None = None) -> tuple[Levels, Levels]:
  r"""(Q, V): the expectation to go of Σ_t c(s_t, a_t) + f(y) under π, bottom-up.

  Args:
    tree: the tree.
    log_pi: per-level log-policy [X, N_t, k].
    leaf_value: per level [X, N_t, k] f(y) on leaf slots (ignored elsewhere).
    edge_cost: per level [X, N_t, k] c(s, a) (default 0).

  Returns:
    (Q per level [X, N_t, k], 0 off the support; V per level [X, N_t]).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.25, 0.75]}, {(0,): 1.0},
    ...                lambda y: float(len(y)))  # r = |y|
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> q, v = expected_to_go(tree, reference_log_probs(tree), [lv.reward for lv in tree.levels])
    >>> float(v[0][0, 0])  # E|y| = 0.5 * 1 + 0.5 * 2
    1.5
  """
  n = len(tree.levels)
  q_out, v_out = [None] * n, [None] * n
  below = None
  for t in reversed(range(n)):
    lv = tree.levels[t]
    go = jnp.where(lv.leaf, leaf_value[t], 0.0)
    if below is not None:
      go = jnp.where(lv.internal, gather_rows(below, lv.child), go)
    if edge_cost is not None:
      go = go + jnp.where(support(lv), edge_cost[t], 0.0)
    q = jnp.where(support(lv), go, 0.0)
    v = jnp.where(lv.node, masked_dot(jnp.exp(log_pi[t]), q), 0.0)
    q_out[t], v_out[t], below = q, v, v
  return tuple(q_out), tuple(v_out)


def node_field(tree: TreeInstance, log_pi: Levels, v: Levels, reach: Levels | None = None
               ) -> Levels:
  r"""G_s = P_π(s) F_s v(s, ·) per level [X, N_t, k] (0 off the support; see the module doc).

  Args:
    tree: the tree.
    log_pi: per-level log-policy.
    v: per-level slot numbers (entries off the support or where π = 0 are ignored).
    reach: per-level log P_π(s) if already computed.

  Examples:
    >>> from nondecoupling.theory.tree.objectives import reward_to_go
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> rho = reference_log_probs(tree)
    >>> q, _ = reward_to_go(tree, rho)
    >>> [g.tolist() for g in node_field(tree, rho, q)]  # P(s) F_s Q(s, ·): the policy gradient of J
    [[[[-0.125, 0.125]]], [[[-0.125, 0.125]]]]
  """
  reach = log_reach(tree, log_pi) if reach is None else reach
  out = []
  for lv, lp, vt, r in zip(tree.levels, log_pi, v, reach):
    pi = jnp.exp(lp)
    field = jnp.exp(r)[..., None] * fisher_matvec(pi, jnp.where(support(lv), vt, 0.0))
    out.append(jnp.where(support(lv), field, 0.0))
  return tuple(out)


def reinforce_field(tree: TreeInstance, log_pi: Levels, leaf_weight: Levels) -> Levels:
  r"""E_{y∼π}[w(y) ∇_θ log π(y|x)] per prompt, = P_π(s) F_s Q^w(s, ·) at every node.

  The exact expected REINFORCE field of a sequence weight w(y) (a reward, an advantage, a
  length-normalised advantage), computed without enumerating sequences.

  Examples:
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> r = tuple(lv.reward for lv in tree.levels)  # w(y) = r(y): REINFORCE
    >>> # = node_field's example
    >>> [g.tolist() for g in reinforce_field(tree, reference_log_probs(tree), r)]
    [[[[-0.125, 0.125]]], [[[-0.125, 0.125]]]]
  """
  q, _ = expected_to_go(tree, log_pi, leaf_weight)
  return node_field(tree, log_pi, q)


def weighted(tree: TreeInstance, field: Levels) -> Levels:
  """w_x · field: a per-prompt field as the gradient of an E_w-weighted objective.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> # w = 1: unchanged
    >>> [g.tolist() for g in weighted(tree, (jnp.ones((1, 1, 2)), jnp.ones((1, 1, 2))))]
    [[[[1.0, 1.0]]], [[[1.0, 1.0]]]]
  """
  w = tree.prompt_weights[..., None, None]
  return tuple(w * f for f in field)


def zeros_like_levels(tree: TreeInstance) -> Levels:
  """Per-level zeros [X, N_t, k] in the tree's dtype.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [z.shape for z in zeros_like_levels(tree)]  # [X, N_t, k] per level
    [(1, 1, 2), (1, 1, 2)]
  """
  return tuple(jnp.zeros_like(lv.reference) for lv in tree.levels)

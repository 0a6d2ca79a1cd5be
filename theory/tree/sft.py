r"""G2: token-sum and token-mean SFT on trees (this project's).

Token-sum SFT sums the per-token losses of each data sequence:

.. math:: L_{\mathrm{sum}}(\pi) = E_w \sum_y d(y|x) \sum_t -\log\pi(y_t|x,y_{<t})
          = E_w \sum_s \sum_a D(s\cdot a)\,(-\log\pi(a|s)) = L(\pi),

D(s·a) the data mass through the edge; normalising by a constant, or by the expected total token
count of a batch (a constant in expectation), rescales it. Its optimum is d, and
∇_{θ_s} L = w_x D(s)(π(·|s) − d(·|s)).

Token-mean SFT divides each sequence's loss by its own length |y| (EOS counted):

.. math:: L_{\mathrm{mean}}(\pi) = E_w \sum_y \frac{d(y|x)}{|y|}\,(-\log\pi(y|x)),\qquad
          \pi_{\mathrm{mean}}(y|x) = \frac{d(y|x)/|y|}{\sum_{y'} d(y'|x)/|y'|},

which shifts mass to short responses; its SFT excess is

.. math:: L(\pi_{\mathrm{mean}}) - L(d) = E_w\big[E_d \log|y| + \log E_d (1/|y|)\big] \ge 0,

zero iff |y| is constant on supp d_x (Jensen). :func:`token_mean_excess` computes the left side as
E_w KL(d‖π_mean) by the chain rule on the tree; :func:`token_mean_excess_closed_form` the right side.

References: THEORY.md G2; verl ``agg_loss`` (token-mean, seq-mean-token-sum, seq-mean-token-mean),
research/fusion-methods.md addendum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import masked_dot, plogq, safe_log
from .fields import weighted
from .instance import TreeInstance, support
from .objectives import expect, sft_excess
from .policy import Levels, conditionals_from_leaf_masses, leaf_lengths, log_reach

__all__ = ["edge_masses", "token_sum_loss", "token_mean_loss", "token_mean_optimum",
           "token_mean_excess", "token_mean_excess_closed_form", "token_sum_grad",
           "token_mean_grad", "length_weighted_log_masses"]


def length_weighted_log_masses(tree: TreeInstance) -> Levels:
  """log(d(y|x)/|y|) on the leaves, per level (−∞ where d = 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [jnp.exp(m).tolist() for m in length_weighted_log_masses(tree)]  # d/|y|: ½/1 and ½/2
    [[[[0.5, 0.0]]], [[[0.0, 0.25]]]]
  """
  return tuple(safe_log(lv.data) - jnp.log(n) for lv, n in zip(tree.levels, leaf_lengths(tree)))


def edge_masses(tree: TreeInstance, log_mass: Levels) -> Levels:
  r"""M(s·a) = Σ_{y ⊒ s·a} m(y) on every edge of the tree (per level), for a leaf mass log m.

  Computed as M(s) · m(a|s) from the conditionals of m (log space).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> # D(s·a)
    >>> [m.tolist() for m in edge_masses(tree, tuple(jnp.log(lv.data) for lv in tree.levels))]
    [[[[0.5, 0.5]]], [[[0.0, 0.5]]]]
  """
  cond = conditionals_from_leaf_masses(tree, log_mass)
  total = _log_total(log_mass)
  reach = log_reach(tree, cond)
  return tuple(jnp.where(support(lv), jnp.exp(total[..., None, None] + r[..., None] + c), 0.0)
               for lv, r, c in zip(tree.levels, reach, cond))


def _log_total(log_mass: Levels) -> jax.Array:
  """[X] log Σ_y m(y) over the leaves of every level."""
  per_level = jnp.stack([jax.nn.logsumexp(m, axis=(-2, -1)) for m in log_mass])
  return jax.nn.logsumexp(per_level, axis=0)


def _token_loss(tree: TreeInstance, edges: Levels, log_pi: Levels) -> jax.Array:
  """E_w Σ_s Σ_a M(s·a)(−log π(a|s))."""
  per = sum(jnp.sum(-plogq(m, lp), axis=(-2, -1)) for m, lp in zip(edges, log_pi))
  return expect(tree, per)


def token_sum_loss(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  r"""L_sum(π) = E_w Σ_s Σ_a D(s·a)(−log π(a|s)), the token-sum SFT loss (= L(π), G2).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(1, 0): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(token_sum_loss(tree, reference_log_probs(tree))), 6)  # 2 log 2
    1.386294
  """
  return _token_loss(tree, edge_masses(tree, tuple(safe_log(lv.data) for lv in tree.levels)),
                     log_pi)


def token_mean_loss(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  r"""L_mean(π) = E_w Σ_y (d(y|x)/|y|)(−log π(y|x)), each sequence's loss over its own length.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> # ½ log 2 / 1 + ½ log 4 / 2
    >>> round(float(token_mean_loss(tree, reference_log_probs(tree))), 6)
    0.693147
  """
  return _token_loss(tree, edge_masses(tree, length_weighted_log_masses(tree)), log_pi)


def token_mean_optimum(tree: TreeInstance) -> Levels:
  r"""log π_mean per level: the conditionals of d(y|x)/|y| (normalised), the token-mean optimum.

  Rows that d/|y| never reaches take ρ's row (they carry no mass under π_mean).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 0): 0.5},
    ...                lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [round(float(v), 6) for v in jnp.exp(token_mean_optimum(tree)[0][0, 0])]  # (1/2 : 1/4)
    [0.666667, 0.333333]
  """
  return conditionals_from_leaf_masses(tree, length_weighted_log_masses(tree))


def token_mean_excess(tree: TreeInstance) -> jax.Array:
  """L(π_mean) − L(d) = E_w KL(d_x‖π_mean,x), by the chain rule on the tree.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(token_mean_excess(tree)), 6)  # ½ log 2 + log(½ + ¼) (lengths 1 and 2)
    0.058892
  """
  return sft_excess(tree, token_mean_optimum(tree))


def token_mean_excess_closed_form(tree: TreeInstance) -> jax.Array:
  r"""E_w[E_d log|y| + log E_d(1/|y|)] (the closed form of G2; ≥ 0 by Jensen).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(token_mean_excess_closed_form(tree)), 6)  # E_d log|y| + log E_d(1/|y|)
    0.058892
  """
  lengths = leaf_lengths(tree)
  mean_log = sum(jnp.sum(masked_dot(lv.data, jnp.log(n)), axis=-1)
                 for lv, n in zip(tree.levels, lengths))
  mean_inv = sum(jnp.sum(masked_dot(lv.data, 1.0 / n), axis=-1)
                 for lv, n in zip(tree.levels, lengths))
  return expect(tree, mean_log + jnp.log(mean_inv))


def _flow_grad(tree: TreeInstance, log_mass: Levels, log_pi: Levels) -> Levels:
  """w_x M(s)(π(·|s) − m(·|s)) for a leaf mass m (total mass M(root) = Σ m)."""
  cond = conditionals_from_leaf_masses(tree, log_mass)
  total = _log_total(log_mass)
  reach = log_reach(tree, cond)
  out = [jnp.exp(total[..., None] + r)[..., None]
         * jnp.where(support(lv), jnp.exp(lp) - jnp.exp(c), 0.0)
         for lv, r, lp, c in zip(tree.levels, reach, log_pi, cond)]
  return weighted(tree, tuple(out))


def token_sum_grad(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""∇_{θ_s} L_sum = w_x D(s)(π(·|s) − d(·|s)) per level (zero at π = d).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.objectives import data_log_policy
    >>> # 0 at π = d
    >>> max(float(jnp.abs(g).max()) for g in token_sum_grad(tree, data_log_policy(tree)))
    0.0
  """
  return _flow_grad(tree, tuple(safe_log(lv.data) for lv in tree.levels), log_pi)


def token_mean_grad(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""∇_{θ_s} L_mean = w_x M(s)(π(·|s) − m(·|s)), m = d/|y| (zero at π = π_mean).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> max(float(jnp.abs(g).max()) for g in token_mean_grad(tree, token_mean_optimum(tree))) < 1e-15
    True
  """
  return _flow_grad(tree, length_weighted_log_masses(tree), log_pi)

r"""G1: soft Bellman values and the token-level optimum of KL-regularised RL (this project's).

Bottom-up over the levels, in log space (the value is carried as V/β so that |r|/β up to the
domain's 1e6 never overflows):

.. math:: V(y) = r(x, y)\ \text{at leaves},\qquad
          V(s) = \beta \log \sum_a \rho(a|s)\, e^{V(s\cdot a)/\beta},\qquad
          \log\pi^*(a|s) = \log\rho(a|s) + V(s\cdot a)/\beta - V(s)/\beta .

G1 (identity): Π_t π*(y_t|y_<t) = π*_β(y|x) = ρ(y|x) e^{r(x,y)/β} / Z_β(x) (the Gibbs tilt of
part A on the leaf set) and V(root) = β log Z_β(x). ``log π*`` is formed as logits minus their
logsumexp per row (never as a difference of two values), so it is exact to rounding for every β in
the domain.

References: THEORY.md G1 and part A; Ziebart 2010 (soft Bellman / maximum-entropy RL);
arXiv 2601.07389 Eq. (8) (the Gibbs tilt).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import NEG_INF, masked_dot
from .instance import TreeInstance, support
from .objectives import expect
from .policy import Levels, gather_rows, reference_log_probs

__all__ = ["soft_bellman", "optimal_policy", "log_partition", "rl_value", "c1"]


def soft_bellman(tree: TreeInstance) -> tuple[Levels, Levels]:
  r"""(V/β per level [X, N_t], log π* per level [X, N_t, k]) by the soft Bellman recursion.

  Args:
    tree: the tree (ρ, r on the leaves, β).

  Returns:
    (soft values divided by β, −∞ on padded rows; log-policy π*, −∞ off the support).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> u, _ = soft_bellman(tree)
    >>> round(float(u[0][0, 0]), 6)  # log(1/2 + 1/4 + e/4)
    0.357374
  """
  log_rho = reference_log_probs(tree)
  n = len(tree.levels)
  values, policy = [None] * n, [None] * n
  below = None
  for t in reversed(range(n)):
    lv = tree.levels[t]
    go = jnp.where(lv.leaf, lv.reward / tree.beta, 0.0)
    if below is not None:
      go = jnp.where(lv.internal, gather_rows(below, lv.child), go)
    logits = jnp.where(support(lv), log_rho[t] + go, NEG_INF)
    u = jax.nn.logsumexp(jnp.where(lv.node[..., None], logits, 0.0), axis=-1)
    values[t] = jnp.where(lv.node, u, NEG_INF)
    policy[t] = jnp.where(support(lv), logits - u[..., None], NEG_INF)  # logits − their logsumexp
    below = jnp.where(lv.node, u, 0.0)
  return tuple(values), tuple(policy)


def optimal_policy(tree: TreeInstance) -> Levels:
  """log π*(a|s) per level: the maximiser of J_β(·; ρ) as an autoregressive policy (G1).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> # root ∝ (½, ½ · (1 + e)/2); (1,) ∝ (1, e)
    >>> [jnp.exp(lp).round(6).tolist() for lp in optimal_policy(tree)]
    [[[[0.349755, 0.650245]]], [[[0.268941, 0.731059]]]]
  """
  return soft_bellman(tree)[1]


def log_partition(tree: TreeInstance) -> jax.Array:
  r"""[X] log Z_β(x) = V(root)/β = log Σ_y ρ(y|x) e^{r(x,y)/β}.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(log_partition(tree)[0]), 6)  # log(½ + ¼ + ¼e)
    0.357374
  """
  return soft_bellman(tree)[0][0][..., 0]


def rl_value(tree: TreeInstance) -> jax.Array:
  """The RL optimum value J_β(π*_β) = β E_w[log Z_β(x)] (B2 on the leaf set).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(rl_value(tree)), 6)  # β log Z
    0.357374
  """
  return tree.beta * expect(tree, log_partition(tree))


def c1(tree: TreeInstance) -> jax.Array:
  r"""C₁(β; ρ) = E_w[log Z_β(x) − E_{d_x}[r]/β] = L(π*_β) − L(ρ) (B3 on the leaf set).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(c1(tree)), 6)  # log Z − E_d r/β = 0.357374 − ½
    -0.142626
  """
  mean_r = sum(jnp.sum(masked_dot(lv.data, lv.reward), axis=-1) for lv in tree.levels)
  return expect(tree, log_partition(tree) - mean_r / tree.beta)

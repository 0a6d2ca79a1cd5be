r"""The objectives of THEORY.md part A on trees: L, J, J_β and KL(π‖ρ) by the chain rule.

Every full-support distribution over the leaves is an autoregressive policy, so part A holds
verbatim on the leaf set; here each quantity is computed level by level:

- SFT loss L(π) = E_w[Σ_y d(y|x)(−log π(y|x))] (sequence form; :mod:`.sft` has the token forms);
- reward J(π) = E_w[Σ_y π(y|x) r(x, y)] = E_w[V^π(root)];
- KL by the chain rule: KL(π_x‖ρ_x) = Σ_s P_π(s) KL(π(·|s)‖ρ(·|s));
- SFT excess L(π) − L(d) = E_w KL(d_x‖π_x) = E_w Σ_s D(s) KL(d(·|s)‖π(·|s)) (B1 by the chain
  rule, no cancellation), D(s) the data mass through s and d(a|s) its conditionals;
- J_β(π; ρ) = J(π) − β E_w KL(π_x‖ρ_x).

The exact logit gradients (per node s, with reach P_π(s), F_s = diag π(·|s) − π(·|s)π(·|s)ᵀ):
∇_{θ_s} L = w_x D(s)(π(·|s) − d(·|s)); ∇_{θ_s} J = w_x P_π(s) F_s Q^π(s, ·);
∇_{θ_s} KL = w_x P_π(s) F_s (log π(·|s)/ρ(·|s) + K(s·)), K(s·a) the KL of the subtree below s·a
(0 at leaves). Policies are per-level log-probabilities (see :mod:`.policy`).

References: THEORY.md parts A, B and G (chain rule); arXiv 2601.07389 (L, J, J_β).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import plogq, safe_log
from ..objectives import kl_rows
from .fields import expected_to_go, node_field, weighted
from .instance import TreeInstance, support
from .policy import (
  Levels,
  conditionals_from_leaf_masses,
  leaf_log_probs,
  log_reach,
  reference_log_probs,
)

__all__ = ["expect", "sft_loss", "sft_optimum_loss", "data_log_policy", "sft_excess", "reward",
           "kl", "kl_subtrees", "regularized_reward", "sft_grad", "reward_grad", "kl_grad",
           "rl_grad", "reward_to_go", "log_ratios"]


def expect(tree: TreeInstance, per_prompt: jax.Array) -> jax.Array:
  """E_w[f] = Σ_x w_x f(x) (weight-0 prompts contribute nothing, even if f is infinite there).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> float(expect(tree, jnp.array([3.0])))  # one prompt of weight 1
    3.0
  """
  w = tree.prompt_weights
  return jnp.sum(jnp.where(w > 0, w * jnp.where(w > 0, per_prompt, 0.0), 0.0), axis=-1)


def _leaf_sum(tree: TreeInstance, per_level: Levels) -> jax.Array:
  """[X] Σ over every slot of every level."""
  return sum(jnp.sum(a, axis=(-2, -1)) for a in per_level)


def sft_loss(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  r"""L(π) = E_w[Σ_y d(y|x)(−log π(y|x))] over the leaves (+∞ if π misses part of supp d).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(1, 0): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(sft_loss(tree, reference_log_probs(tree))), 6)  # −log 1/4
    1.386294

  References: arXiv 2601.07389, Lemma 1 (expectation form).
  """
  leaves = leaf_log_probs(tree, log_pi)
  return expect(tree, -_leaf_sum(tree, [plogq(lv.data, lp) for lv, lp in
                                        zip(tree.levels, leaves)]))


def sft_optimum_loss(tree: TreeInstance) -> jax.Array:
  """min over policies of L: L(d) = E_w[H(d_x)] (entropy of the data over the leaves).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> round(float(sft_optimum_loss(tree)), 6)  # H(½, ½) = log 2
    0.693147
  """
  return expect(tree, -_leaf_sum(tree, [plogq(lv.data, safe_log(lv.data)) for lv in tree.levels]))


def data_log_policy(tree: TreeInstance) -> Levels:
  """The data as a tree policy: log d(a|s) = log D(s·a) − log D(s) (ρ's rows where D(s) = 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> [jnp.exp(lp).tolist() for lp in data_log_policy(tree)]  # d(·|root), d(·|(1,))
    [[[[0.5, 0.5]]], [[[0.0, 1.0]]]]
  """
  return conditionals_from_leaf_masses(tree, tuple(safe_log(lv.data) for lv in tree.levels))


def sft_excess(tree: TreeInstance, log_pi: Levels, log_data: Levels | None = None) -> jax.Array:
  r"""L(π) − L(d) = E_w Σ_s D(s) KL(d(·|s)‖π(·|s)) (chain rule; no cancellation of L terms).

  Args:
    tree: the tree.
    log_pi: per-level log-policy.
    log_data: the target as a tree policy (default: the data d; any leaf distribution converted
      with :func:`~nondecoupling.theory.tree.policy.conditionals_from_leaf_masses` works).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> round(float(sft_excess(tree, reference_log_probs(tree))), 6)  # KL(d‖ρ) = ½ log(½/¼)
    0.346574
  """
  log_data = data_log_policy(tree) if log_data is None else log_data
  reach = log_reach(tree, log_data)
  per = [plogq(jnp.exp(r), kl_rows(ld, lp)) for r, ld, lp in zip(reach, log_data, log_pi)]
  return expect(tree, sum(jnp.sum(a, axis=-1) for a in per))


def reward_to_go(tree: TreeInstance, log_pi: Levels) -> tuple[Levels, Levels]:
  """(Q^π, V^π) per level: Q^π(s, a) = E_π[r | s·a], V^π(s) = Σ_a π(a|s) Q^π(s, a).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> q, v = reward_to_go(tree, reference_log_probs(tree))
    >>> q[0].tolist(), v[0].tolist()  # Q(root, ·) = (r(0), E[r | (1,)]) = (0, ½); V(root) = ¼
    ([[[0.0, 0.5]]], [[0.25]])
  """
  return expected_to_go(tree, log_pi, tuple(lv.reward for lv in tree.levels))


def reward(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  """J(π) = E_w[Σ_y π(y|x) r(x, y)] = E_w[V^π(root)].

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> float(reward(tree, reference_log_probs(tree)))  # ρ(1 1) · 1
    0.25
  """
  _, v = reward_to_go(tree, log_pi)
  return expect(tree, v[0][..., 0])


def log_ratios(tree: TreeInstance, log_pi: Levels) -> Levels:
  """k1(s, a) = log π(a|s) − log ρ(a|s) on the support (0 elsewhere), per level.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> # log(π*/ρ) at (1,): log(2/(1 + e)), log(2e/(1 + e))
    >>> log_ratios(tree, optimal_policy(tree))[1].round(6).tolist()
    [[[-0.620115, 0.379885]]]
  """
  return tuple(jnp.where(support(lv), jnp.where(support(lv), lp, 0.0) - lr, 0.0)
               for lv, lp, lr in zip(tree.levels, log_pi, reference_log_probs(tree)))


def kl_subtrees(tree: TreeInstance, log_pi: Levels) -> tuple[Levels, Levels]:
  r"""(Q^K, K): K(s) = KL of π and ρ on the subtree below s, Q^K(s, a) = k1(s, a) + K(s·a).

  K(root) = KL(π_x‖ρ_x); K(leaf) = 0.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> q_k, k = kl_subtrees(tree, optimal_policy(tree))
    >>> round(float(k[0][0, 0]), 6)  # K(root) = KL(π*‖ρ) = E_π* r/β − log Z = 0.475367 − 0.357374
    0.117993
  """
  zeros = tuple(jnp.zeros_like(lv.reference) for lv in tree.levels)
  return expected_to_go(tree, log_pi, zeros, log_ratios(tree, log_pi))


def kl(tree: TreeInstance, log_pi: Levels, log_q: Levels | None = None) -> jax.Array:
  r"""[X] KL(π_x‖q_x) = Σ_s P_π(s) KL(π(·|s)‖q(·|s)) (chain rule; q defaults to ρ).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> pi = tuple(jnp.log(jnp.array([[[0.5, 0.5]]])) for _ in range(2))
    >>> float(kl(tree, pi)[0])
    0.0
  """
  log_q = reference_log_probs(tree) if log_q is None else log_q
  reach = log_reach(tree, log_pi)
  per = [plogq(jnp.exp(r), kl_rows(lp, lq)) for r, lp, lq in zip(reach, log_pi, log_q)]
  return sum(jnp.sum(a, axis=-1) for a in per)


def regularized_reward(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  r"""J_β(π; ρ) = J(π) − β E_w KL(π_x‖ρ_x).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> round(float(regularized_reward(tree, optimal_policy(tree))), 6)  # β log Z = log(¾ + ¼e)
    0.357374
  """
  return reward(tree, log_pi) - tree.beta * expect(tree, kl(tree, log_pi))


def sft_grad(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""∇_{θ_s} L = w_x D(s) (π(·|s) − d(·|s)) per level (the token-sum SFT gradient, G2).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> # D(s)(π − d): 0; ½(½ − 0, ½ − 1)
    >>> [g.tolist() for g in sft_grad(tree, reference_log_probs(tree))]
    [[[[0.0, 0.0]]], [[[0.25, -0.25]]]]
  """
  log_d = data_log_policy(tree)
  reach = log_reach(tree, log_d)
  out = [jnp.exp(r)[..., None] * jnp.where(support(lv), jnp.exp(lp) - jnp.exp(ld), 0.0)
         for lv, r, lp, ld in zip(tree.levels, reach, log_pi, log_d)]
  return weighted(tree, tuple(out))


def reward_grad(tree: TreeInstance, log_pi: Levels) -> Levels:
  """∇_θ J = w_x P_π(s) F_s Q^π(s, ·) per level (the exact policy gradient).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> # P(s) π(Q − V) at each node
    >>> [g.tolist() for g in reward_grad(tree, reference_log_probs(tree))]
    [[[[-0.125, 0.125]]], [[[-0.125, 0.125]]]]
  """
  q, _ = reward_to_go(tree, log_pi)
  return weighted(tree, node_field(tree, log_pi, q))


def kl_grad(tree: TreeInstance, log_pi: Levels) -> Levels:
  """∇_θ E_w KL(π‖ρ) = w_x P_π(s) F_s (k1(s, ·) + K(s·)) per level.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> max(float(jnp.abs(g).max()) for g in kl_grad(tree, reference_log_probs(tree)))  # 0 at π = ρ
    0.0
  """
  q, _ = kl_subtrees(tree, log_pi)
  return weighted(tree, node_field(tree, log_pi, q))


def rl_grad(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""∇_θ J_β = w_x P_π(s) F_s (Q^π(s, ·) − β(k1(s, ·) + K(s·))) per level.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> # 0 at π*_β
    >>> max(float(jnp.abs(g).max()) for g in rl_grad(tree, optimal_policy(tree))) < 1e-15
    True
  """
  q, _ = reward_to_go(tree, log_pi)
  qk, _ = kl_subtrees(tree, log_pi)
  v = tuple(a - tree.beta * b for a, b in zip(q, qk))
  return weighted(tree, node_field(tree, log_pi, v))

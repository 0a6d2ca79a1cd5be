r"""G3: the per-token KL estimators and the exact expectations of their values and gradients.

At a sampled token a at node s, with k1 = log π(a|s) − log ρ(a|s):

- ``k1`` = k1;  ``k2`` = ½ k1²;  ``k3`` = e^{−k1} − 1 + k1 (≥ 0; computed without cancellation);
- ``k3_clamped``: verl's ``low_var_kl``: u = clip(log ρ − log π, −20, 20), value
  clip(e^u − u − 1, −10, 10) (gradient 0 where either clip is active).

Two placements (on-policy samples y ∼ π; gradients through the loss only):

- in the reward (REINFORCE on r − β Σ_t k1_t): the KL part of the expected field is
  E_π[(Σ_t k1_t) ∇log π(y)] = P_π(s) F_s (k1(s, ·) + K(s·)) = ∇_θ KL(π‖ρ) of the sequence
  (:func:`reward_kl_field`);
- in the loss (Σ_t k(a_t|s_t) with the samples held fixed): E_π[Σ_t ∇k] = P_π(s) F_s c(s, ·),
  c = ∂k/∂log π(a|s) (:func:`loss_kl_field`). Closed forms: k1 → 0 (no regularisation);
  k2 → P_π(s) ∇_{θ_s} KL(π(·|s)‖ρ(·|s)), the sequence gradient without the terms through later
  reach probabilities P_π(s) F_s K(s·) (:func:`later_reach_terms`; equal to it only at depth 1);
  k3 → P_π(s)(π(·|s) − ρ(·|s)), the gradient of the forward KL(ρ‖π) per node, reach-weighted
  (:func:`k3_loss_field`).

Values: E_π Σ_t k1_t = E_π Σ_t k3_t = KL(π‖ρ) (:func:`expected_token_sum`); the value of k3 is
unbiased while its loss gradient is not. :func:`stop_gradient_surrogate` is the function whose
autodiff gradient is the loss field (P and π under ``stop_gradient``), the independent reference the
statements compare the closed forms with.

Fields are per prompt (no prompt weight; multiply with :func:`~.fields.weighted`).

References: THEORY.md G3; verl ``kl_penalty_forward`` (research/fusion-methods.md addendum);
Schulman 2020 ("Approximating KL divergence", k1/k2/k3); Tang & Munos, arXiv 2506.09477.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import expm1_minus_x, masked_dot
from .fields import node_field
from .instance import TreeInstance, support
from .objectives import kl_subtrees, log_ratios
from .policy import Levels, log_reach, policy_log_probs, reference_log_probs

__all__ = ["ESTIMATORS", "CLAMP_LOG_RATIO", "CLAMP_VALUE", "token_kl", "token_kl_slope",
           "expected_token_sum", "loss_kl_field", "reward_kl_field", "k2_loss_field",
           "k3_loss_field", "later_reach_terms", "stop_gradient_surrogate"]

ESTIMATORS = ("k1", "k2", "k3", "k3_clamped")
CLAMP_LOG_RATIO = 20.0  # verl: kl = log ρ − log π clamped to [−20, 20]
CLAMP_VALUE = 10.0      # verl: the k3 value clamped to [−10, 10]


def _check(estimator: str) -> None:
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator is {estimator!r}, expected one of {', '.join(ESTIMATORS)}")


def token_kl(k1: jax.Array, estimator: str) -> jax.Array:
  r"""The per-token value of an estimator at log-ratio k1 = log π(a|s) − log ρ(a|s).

  Examples:
    >>> import jax.numpy as jnp
    >>> k1 = jnp.array([-1.0, 0.0, 2.0])
    >>> [round(float(v), 6) for v in token_kl(k1, "k3")]  # e^{−k1} − 1 + k1
    [0.718282, 0.0, 1.135335]
    >>> float(token_kl(jnp.array(-30.0), "k3_clamped"))  # clamped to 10
    10.0
  """
  _check(estimator)
  if estimator == "k1":
    return k1
  if estimator == "k2":
    return 0.5 * k1 * k1
  if estimator == "k3":
    return expm1_minus_x(-k1)
  u = jnp.clip(-k1, -CLAMP_LOG_RATIO, CLAMP_LOG_RATIO)
  return jnp.clip(expm1_minus_x(u), -CLAMP_VALUE, CLAMP_VALUE)


def token_kl_slope(k1: jax.Array, estimator: str) -> jax.Array:
  r"""c = ∂k/∂log π(a|s) at fixed sample: k1 → 1, k2 → k1, k3 → 1 − e^{−k1}, clamped k3 → masked.

  Examples:
    >>> import jax.numpy as jnp
    >>> [round(float(v), 6) for v in token_kl_slope(jnp.array([0.5, -25.0]), "k3_clamped")]
    [0.393469, 0.0]
  """
  _check(estimator)
  if estimator == "k1":
    return jnp.ones_like(k1)
  if estimator == "k2":
    return k1
  if estimator == "k3":
    return -jnp.expm1(-k1)
  inside = jnp.abs(k1) <= CLAMP_LOG_RATIO
  u = jnp.clip(-k1, -CLAMP_LOG_RATIO, CLAMP_LOG_RATIO)
  e = jnp.expm1(u)
  # The value clip tests e − u ≤ 10: no cancellation matters there (e − u cancels only where it
  # is far below 10), so the one expm1 serves the test and the slope.
  active = inside & (e - u <= CLAMP_VALUE)
  return jnp.where(active, -e, 0.0)


def expected_token_sum(tree: TreeInstance, log_pi: Levels, estimator: str) -> jax.Array:
  r"""[X] E_{y∼π}[Σ_t k(y_t|y_<t)] = Σ_s P_π(s) Σ_a π(a|s) k(a|s) (= KL(π‖ρ) for k1 and k3).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> pi = optimal_policy(tree)
    >>> [round(float(expected_token_sum(tree, pi, k)[0]), 6) for k in ("k1", "k3")]  # both KL(π*‖ρ)
    [0.117993, 0.117993]
  """
  reach = log_reach(tree, log_pi)
  k1 = log_ratios(tree, log_pi)
  per = [jnp.exp(r) * masked_dot(jnp.exp(lp), token_kl(k, estimator))
         for r, lp, k in zip(reach, log_pi, k1)]
  return sum(jnp.sum(jnp.where(lv.node, a, 0.0), axis=-1) for lv, a in zip(tree.levels, per))


def loss_kl_field(tree: TreeInstance, log_pi: Levels, estimator: str) -> Levels:
  r"""E_π[Σ_t ∇_θ k(a_t|s_t)] with the samples held fixed: P_π(s) F_s c(s, ·), per level.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> # k1 in the loss: 0
    >>> max(float(jnp.abs(g).max()) for g in loss_kl_field(tree, optimal_policy(tree), "k1")) < 1e-15
    True
  """
  slopes = tuple(token_kl_slope(k, estimator) for k in log_ratios(tree, log_pi))
  return node_field(tree, log_pi, slopes)


def reward_kl_field(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""E_π[(Σ_t k1_t) ∇_θ log π(y)] = P_π(s) F_s (k1(s, ·) + K(s·)): k1 in the reward (= ∇KL).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import policy_log_probs
    >>> import jax.numpy as jnp
    >>> # (1,): (¼, ¾)
    >>> pi = policy_log_probs(tree, (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]])))
    >>> # ∇KL(π‖ρ): the root sees K((1,)) too
    >>> [[round(v, 6) for v in g.ravel().tolist()] for g in reward_kl_field(tree, pi)]
    [[-0.032703, 0.032703], [-0.102995, 0.102995]]
  """
  q, _ = kl_subtrees(tree, log_pi)
  return node_field(tree, log_pi, q)


def k2_loss_field(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""P_π(s) ∇_{θ_s} KL(π(·|s)‖ρ(·|s)) = P_π(s) F_s k1(s, ·): the k2 loss field in closed form.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import policy_log_probs
    >>> # (1,): (¼, ¾)
    >>> pi = policy_log_probs(tree, (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]])))
    >>> # the root's own KL is 0: no root term
    >>> [[round(v, 6) for v in g.ravel().tolist()] for g in k2_loss_field(tree, pi)]
    [[0.0, 0.0], [-0.102995, 0.102995]]
  """
  return node_field(tree, log_pi, log_ratios(tree, log_pi))


def k3_loss_field(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""P_π(s)(π(·|s) − ρ(·|s)): the k3 loss field in closed form (forward KL per node).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import policy_log_probs
    >>> # root: (¼, ¾)
    >>> pi = policy_log_probs(tree, (jnp.array([[[0.0, jnp.log(3.0)]]]), jnp.zeros((1, 1, 2))))
    >>> # P(s)(π − ρ): (−¼, ¼) at the root, 0 at (1,)
    >>> [[round(v, 6) for v in g.ravel().tolist()] for g in k3_loss_field(tree, pi)]
    [[-0.25, 0.25], [0.0, 0.0]]
  """
  reach = log_reach(tree, log_pi)
  return tuple(jnp.where(support(lv), jnp.exp(r)[..., None] * (jnp.exp(lp) - lv.reference), 0.0)
               for lv, r, lp in zip(tree.levels, reach, log_pi))


def later_reach_terms(tree: TreeInstance, log_pi: Levels) -> Levels:
  r"""P_π(s) F_s K(s·): what the k2 loss field misses of ∇KL (K = KL of the subtree below s·a).

  Zero at depth 1 (every child is a leaf, K = 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import policy_log_probs
    >>> # (1,): (¼, ¾)
    >>> pi = policy_log_probs(tree, (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]])))
    >>> # root: π(K − π·K), K = (0, 0.130812)
    >>> [[round(v, 6) for v in g.ravel().tolist()] for g in later_reach_terms(tree, pi)]
    [[-0.032703, 0.032703], [0.0, 0.0]]
  """
  q, _ = kl_subtrees(tree, log_pi)
  k_child = tuple(a - b for a, b in zip(q, log_ratios(tree, log_pi)))
  return node_field(tree, log_pi, k_child)


def stop_gradient_surrogate(tree: TreeInstance, theta: Levels, estimator: str) -> jax.Array:
  r"""[X] Σ_s sg(P_π(s)) Σ_a sg(π(a|s)) k(a|s; θ): autodiff of it is the expected loss gradient.

  The sampling distribution (reach and node probabilities) is held fixed, the estimator is
  differentiated: ∇_θ of this is E_π[Σ_t ∇k] with the samples fixed (G3, loss placement).

  Args:
    tree: the tree.
    theta: per-level logits.
    estimator: one of :data:`ESTIMATORS`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # (1,): (¼, ¾)
    >>> # KL(π‖ρ) = ½ KL((¼, ¾)‖(½, ½))
    >>> round(float(stop_gradient_surrogate(tree, theta, "k3")[0]), 6)
    0.065406
  """
  log_pi = policy_log_probs(tree, theta)
  fixed = jax.lax.stop_gradient(log_pi)
  reach = jax.lax.stop_gradient(log_reach(tree, fixed))
  log_rho = reference_log_probs(tree)
  total = 0.0
  for lv, lp, lq, r, lr in zip(tree.levels, log_pi, fixed, reach, log_rho):
    sup = support(lv)
    k1 = jnp.where(sup, jnp.where(sup, lp, 0.0) - jnp.where(sup, lr, 0.0), 0.0)
    w = jnp.where(sup, jnp.exp(r)[..., None] * jnp.exp(lq), 0.0)
    total = total + jnp.sum(w * jnp.where(sup, token_kl(k1, estimator), 0.0), axis=(-2, -1))
  return total

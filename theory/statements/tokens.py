r"""G1–G4 of THEORY.md part G (token level, this project's) as statements: sides and a margin.

Every function is unbatched over instances (one :class:`~nondecoupling.theory.tree.instance.TreeInstance`
with its prompt axis) and returns a :class:`~nondecoupling.theory.verdict.Verdict`; statements on a
policy take per-level probe logits θ. Each side comes from a different route:

- level recursions of :mod:`nondecoupling.theory.tree` (bottom-up values, top-down reach, node
  fields in closed form), against
- the sequence level: the leaf set as an atomic instance (:func:`~.tree.atomic.leaf_instance`) and
  the atomic engine of parts A–B (Gibbs tilt, KL, J), with ``jax.grad`` through the sequence
  probabilities for the gradient identities, and ``jax.grad`` of the stop-gradient surrogate for
  the expected gradients of per-token losses.

Identities report minus the worst relative residual over real prompts (and slots); gradient
identities minus max |difference| / max(1, max |autodiff side|), as B5 does.

G5 (length normalisation in group policy gradients) needs the distribution of a group of leaves;
:func:`~.tree.fields.reinforce_field` with a sequence weight is its building block.

References: THEORY.md G1–G4 (this project's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import objectives as atomic
from .._numerics import safe_log
from ..tree import bellman, fixed_points, kl, objectives as tree_obj, sft
from ..tree.atomic import leaf_instance, leaf_policy
from ..tree.fields import weighted
from ..tree.instance import TreeInstance
from ..tree.policy import Levels, flat_slots, leaf_lengths, leaf_mask, logits_of, policy_log_probs
from ..verdict import Verdict, identity

# The rounding bound of every margin here, in margin units (relative residuals): a fixed float64
# bound until the per-statement bounds of theory/verdict.py are derived for the tree recursions.
TREE_SLACK = 1e-9

__all__ = [
    "soft_value_is_log_partition", "bellman_policy_is_tilt",
    "token_sum_is_sequence_loss", "token_sum_gradient", "token_mean_optimum",
    "token_mean_stationary", "token_mean_excess",
    "k1_reward_is_kl_gradient", "k1_loss_has_no_gradient", "k2_loss_is_node_kl_gradient",
    "k2_misses_later_reach_terms", "k2_is_kl_gradient_at_depth_1", "k3_loss_is_forward_kl",
    "k3_clamped_loss_field", "k3_value_is_kl",
    "fixed_point_stationary", "k2_fixed_point_is_tilt_at_depth_1", "flow_reaches_fixed_point",
    "is_depth_one",
]


def _real(tree: TreeInstance) -> jax.Array:
  return tree.prompt_weights > 0


def _worst(lhs: jax.Array, rhs: jax.Array, valid: jax.Array, applies=True) -> Verdict:
  """identity(lhs, rhs) at the entry (among ``valid``) of the largest relative residual."""
  scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(lhs), jnp.abs(rhs)))
  resid = jnp.where(lhs == rhs, 0.0, jnp.abs(lhs - rhs)) / scale
  resid = jnp.where(valid, resid, -1.0)
  i = jnp.argmax(resid.reshape(-1))
  pick = lambda a: jnp.broadcast_to(a, valid.shape).reshape(-1)[i]
  return identity(pick(lhs), pick(rhs), TREE_SLACK * _scale(pick(lhs), pick(rhs)), applies)


def _scale(lhs, rhs):
  """max(1, |lhs|, |rhs|): identity() divides the absolute slack by it."""
  return jnp.maximum(1.0, jnp.maximum(jnp.abs(lhs), jnp.abs(rhs)))


def _max_abs(levels: Levels, tree: TreeInstance) -> jax.Array:
  real = _real(tree)[..., None, None]
  return jnp.max(jnp.stack([jnp.max(jnp.where(real, jnp.abs(a), 0.0)) for a in levels]))


def _gradients(closed: Levels, auto: Levels, tree: TreeInstance, applies=True) -> Verdict:
  """closed form = autodiff: margin −max|closed − auto| / max(1, max|auto|) (as B5)."""
  diff = tuple(a - b for a, b in zip(closed, auto))
  size_auto = _max_abs(auto, tree)
  return Verdict(_max_abs(closed, tree), size_auto,
                 -_max_abs(diff, tree) / jnp.maximum(1.0, size_auto), jnp.asarray(applies),
                 jnp.full((), jnp.nan), jnp.asarray(TREE_SLACK))


def _zero(value: jax.Array, applies=True, slack=TREE_SLACK) -> Verdict:
  """value = 0 for a size (≥ 0): margin −value / max(1, value)."""
  return Verdict(value, jnp.zeros_like(value), -value / jnp.maximum(1.0, value),
                 jnp.asarray(applies), jnp.full((), jnp.nan), jnp.asarray(slack))


def is_depth_one(tree: TreeInstance) -> jax.Array:
  """[] bool: no real prompt has a response longer than one token (the atomic case).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> bool(is_depth_one(tree))  # (1, 0) and (1, 1) have two tokens
    False
  """
  real = _real(tree)
  deep = [jnp.any(lv.leaf.any((-2, -1)) & real) for lv in tree.levels[1:]]
  return ~jnp.any(jnp.stack(deep)) if deep else jnp.asarray(True)


def _sequence_kl(tree: TreeInstance, theta: Levels) -> jax.Array:
  """E_w KL(π‖ρ) at the sequence level (atomic engine on the leaf set)."""
  inst = leaf_instance(tree)
  log_pi = leaf_policy(tree, policy_log_probs(tree, theta))
  return atomic.expect(inst, atomic.kl_rows(log_pi, safe_log(inst.reference)))


def _sequence_reward(tree: TreeInstance, theta: Levels) -> jax.Array:
  inst = leaf_instance(tree)
  return atomic.reward(inst, leaf_policy(tree, policy_log_probs(tree, theta)))


# ----------------------------------------------------------------------------- G1

def soft_value_is_log_partition(tree: TreeInstance) -> Verdict:
  r"""G1: V(root)/β (soft Bellman, bottom-up) = log Σ_y ρ(y|x) e^{r(x,y)/β} (leaf set).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = soft_value_is_log_partition(tree)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # log(½ + ¼ + ¼e) both ways
    (0.357374, 0.357374)
  """
  inst = leaf_instance(tree)
  return _worst(bellman.log_partition(tree), atomic.log_partition(inst), _real(tree))


def bellman_policy_is_tilt(tree: TreeInstance) -> Verdict:
  r"""G1: Π_t π*(y_t|y_<t) = π*_β(y|x) (the Gibbs tilt of the leaf set), in log space.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = bellman_policy_is_tilt(tree)
    >>> float(v.margin) >= -float(v.slack)  # Π_t π*(y_t|y_<t) = π*_β(y)
    True
  """
  lhs = leaf_policy(tree, bellman.optimal_policy(tree))
  rhs = atomic.gibbs_tilt(leaf_instance(tree))
  return _worst(lhs, rhs, leaf_mask(tree) & _real(tree)[..., None])


# ----------------------------------------------------------------------------- G2

def token_sum_is_sequence_loss(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G2: Σ_s Σ_a D(s·a)(−log π(a|s)) (token sum over edges) = Σ_y d(y)(−log π(y)) (sequences).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = token_sum_is_sequence_loss(tree, theta)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # ½ log 2 + ½ (log 2 + log(4/3))
    (0.836988, 0.836988)
  """
  log_pi = policy_log_probs(tree, theta)
  inst = leaf_instance(tree)
  lhs = sft.token_sum_loss(tree, log_pi)
  rhs = atomic.sft_loss(inst, leaf_policy(tree, log_pi))
  return identity(lhs, rhs, TREE_SLACK * _scale(lhs, rhs))


def token_sum_gradient(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G2: w_x D(s)(π(·|s) − d(·|s)) = ∇_θ L of the sequence loss (jax.grad).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = token_sum_gradient(tree, theta)
    >>> float(v.margin) >= -float(v.slack)  # closed form = jax.grad
    True
  """
  inst = leaf_instance(tree)
  auto = jax.grad(lambda t: atomic.sft_loss(inst, leaf_policy(tree, policy_log_probs(tree, t))))(
      theta)
  return _gradients(sft.token_sum_grad(tree, policy_log_probs(tree, theta)), auto, tree)


def token_mean_optimum(tree: TreeInstance) -> Verdict:
  r"""G2: the tree policy of the token-mean optimum has leaf law (d/|y|) / Σ d/|y| (on supp d).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = token_mean_optimum(tree)
    >>> float(v.margin) >= -float(v.slack)  # leaf law ∝ (½/1, ½/2) = (⅔, ⅓)
    True
  """
  lhs = leaf_policy(tree, sft.token_mean_optimum(tree))
  inst = leaf_instance(tree)
  lengths = flat_slots(leaf_lengths(tree))
  logits = safe_log(inst.data) - jnp.log(lengths)
  rhs = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  return _worst(lhs, rhs, (inst.data > 0) & _real(tree)[..., None])


def token_mean_stationary(tree: TreeInstance) -> Verdict:
  r"""G2: ∇_θ L_mean = 0 at π_mean (jax.grad of Σ_y (d/|y|)(−log π(y)) at its logits).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = token_mean_stationary(tree)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  inst = leaf_instance(tree)
  lengths = flat_slots(leaf_lengths(tree))
  weights = jnp.where(inst.data > 0, inst.data / lengths, 0.0)

  def loss(theta):
    log_pi = leaf_policy(tree, policy_log_probs(tree, theta))
    return atomic.expect(inst, -jnp.sum(jnp.where(weights > 0, weights * log_pi, 0.0), -1))

  grad = jax.grad(loss)(logits_of(tree, sft.token_mean_optimum(tree)))
  return _zero(_max_abs(grad, tree))


def token_mean_excess(tree: TreeInstance) -> Verdict:
  r"""G2: L(π_mean) − L(d) (chain rule on the tree) = E_w[E_d log|y| + log E_d(1/|y|)].

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = token_mean_excess(tree)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # ½ log 2 + log ¾ both ways
    (0.058892, 0.058892)
  """
  lhs, rhs = sft.token_mean_excess(tree), sft.token_mean_excess_closed_form(tree)
  return identity(lhs, rhs, TREE_SLACK * _scale(lhs, rhs))


# ----------------------------------------------------------------------------- G3

def _surrogate_grad(tree: TreeInstance, theta: Levels, estimator: str) -> Levels:
  return jax.grad(lambda t: tree_obj.expect(tree, kl.stop_gradient_surrogate(tree, t,
                                                                              estimator)))(theta)


def k1_reward_is_kl_gradient(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: E_π[(Σ_t k1_t) ∇log π(y)] = ∇_θ KL(π‖ρ) of the sequence (so k1 in the reward is β∇KL).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k1_reward_is_kl_gradient(tree, theta)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  log_pi = policy_log_probs(tree, theta)
  closed = weighted(tree, kl.reward_kl_field(tree, log_pi))
  return _gradients(closed, jax.grad(lambda t: _sequence_kl(tree, t))(theta), tree)


def k1_loss_has_no_gradient(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: k1 in the loss: E_π[Σ_t ∇k1_t] = 0 (jax.grad of the stop-gradient surrogate).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k1_loss_has_no_gradient(tree, theta)
    >>> abs(float(v.lhs)) < 1e-15  # the k1 surrogate's expected gradient is 0
    True
  """
  return _zero(_max_abs(_surrogate_grad(tree, theta, "k1"), tree))


def k2_loss_is_node_kl_gradient(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: k2 in the loss: E_π[Σ_t ∇k2_t] = P_π(s) ∇_{θ_s} KL(π(·|s)‖ρ(·|s)).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k2_loss_is_node_kl_gradient(tree, theta)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  closed = weighted(tree, kl.k2_loss_field(tree, policy_log_probs(tree, theta)))
  return _gradients(closed, _surrogate_grad(tree, theta, "k2"), tree)


def k2_misses_later_reach_terms(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: ∇KL(π‖ρ) − (k2 loss field) = P_π(s) F_s K(s·), the terms through later reach.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k2_misses_later_reach_terms(tree, theta)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  auto = tuple(a - b for a, b in zip(jax.grad(lambda t: _sequence_kl(tree, t))(theta),
                                     _surrogate_grad(tree, theta, "k2")))
  closed = weighted(tree, kl.later_reach_terms(tree, policy_log_probs(tree, theta)))
  return _gradients(closed, auto, tree)


def k2_is_kl_gradient_at_depth_1(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: at depth 1 the k2 loss field equals ∇KL(π‖ρ) (applies only to depth-1 trees).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> bool(k2_is_kl_gradient_at_depth_1(tree, theta).applies)  # depth 2: does not apply
    False
  """
  closed = weighted(tree, kl.k2_loss_field(tree, policy_log_probs(tree, theta)))
  auto = jax.grad(lambda t: _sequence_kl(tree, t))(theta)
  return _gradients(closed, auto, tree, applies=is_depth_one(tree))


def k3_loss_is_forward_kl(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: k3 in the loss: E_π[Σ_t ∇k3_t] = P_π(s)(π(·|s) − ρ(·|s)) (forward KL per node).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k3_loss_is_forward_kl(tree, theta)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  closed = weighted(tree, kl.k3_loss_field(tree, policy_log_probs(tree, theta)))
  return _gradients(closed, _surrogate_grad(tree, theta, "k3"), tree)


def k3_clamped_loss_field(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: verl's clamped k3 in the loss: P_π(s) F_s c(s, ·) with the clamps' masks = autodiff.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k3_clamped_loss_field(tree, theta)
    >>> float(v.margin) >= -float(v.slack)
    True
  """
  closed = weighted(tree, kl.loss_kl_field(tree, policy_log_probs(tree, theta), "k3_clamped"))
  return _gradients(closed, _surrogate_grad(tree, theta, "k3_clamped"), tree)


def k3_value_is_kl(tree: TreeInstance, theta: Levels) -> Verdict:
  r"""G3: E_π[Σ_t k3_t] (reach-weighted node sums) = KL(π_x‖ρ_x) of the sequences, per prompt.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> import jax.numpy as jnp
    >>> theta = (jnp.zeros((1, 1, 2)), jnp.array([[[0.0, jnp.log(3.0)]]]))  # π(·|(1,)) = (¼, ¾)
    >>> v = k3_value_is_kl(tree, theta)
    >>> round(float(v.lhs), 6), round(float(v.rhs), 6)  # ½ KL((¼, ¾)‖(½, ½)) both ways
    (0.065406, 0.065406)
  """
  log_pi = policy_log_probs(tree, theta)
  inst = leaf_instance(tree)
  rhs = atomic.kl_rows(leaf_policy(tree, log_pi), safe_log(inst.reference))
  return _worst(kl.expected_token_sum(tree, log_pi, "k3"), rhs, _real(tree))


# ----------------------------------------------------------------------------- G4

def _autodiff_field(tree: TreeInstance, theta: Levels, construct: str) -> Levels:
  """The ascent field of a construct by jax.grad of sequence-level functions (with w)."""
  grad_j = jax.grad(lambda t: _sequence_reward(tree, t))(theta)
  if construct == "k1_reward":
    kl_part = jax.grad(lambda t: _sequence_kl(tree, t))(theta)
  else:
    kl_part = _surrogate_grad(tree, theta, construct[:2])
  return tuple(a - tree.beta * b for a, b in zip(grad_j, kl_part))


def fixed_point_stationary(tree: TreeInstance, construct: str) -> Verdict:
  r"""G4: the closed form of a construct's fixed point zeroes its expected field (jax.grad).

  lhs = max |field| at the closed-form policy, margin = −lhs / max(1, max |∇J|).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = fixed_point_stationary(tree, "k3_loss")
    >>> float(v.margin) >= -float(v.slack)  # π = βρ/(β + V − Q) is stationary
    True
  """
  theta = logits_of(tree, fixed_points.closed_form_fixed_point(tree, construct))
  field = _autodiff_field(tree, theta, construct)
  size = _max_abs(jax.grad(lambda t: _sequence_reward(tree, t))(theta), tree)
  value = _max_abs(field, tree)
  return Verdict(value, jnp.zeros_like(value), -value / jnp.maximum(1.0, size), jnp.asarray(True),
                 jnp.full((), jnp.nan), jnp.asarray(TREE_SLACK))


def k2_fixed_point_is_tilt_at_depth_1(tree: TreeInstance) -> Verdict:
  r"""G4: at depth 1 the k2-in-loss fixed point ρ e^{Q^π/β} is the Gibbs tilt (Q^π = r).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> bool(k2_fixed_point_is_tilt_at_depth_1(tree).applies)  # depth 2: does not apply
    False
  """
  lhs = leaf_policy(tree, fixed_points.closed_form_fixed_point(tree, "k2_loss"))
  rhs = atomic.gibbs_tilt(leaf_instance(tree))
  return _worst(lhs, rhs, leaf_mask(tree) & _real(tree)[..., None], applies=is_depth_one(tree))


def flow_reaches_fixed_point(tree: TreeInstance, construct: str, tol: float = 1e-11,
                             max_steps: int = 200_000, slack: float = 1e-8) -> Verdict:
  r"""G4: flowing the construct's field to stationarity reaches its closed-form fixed point.

  lhs = max over leaves |π_flow(y) − π_closed(y)|, rhs = 0; applies only when the flow met
  ``tol`` within ``max_steps`` (otherwise it is not counted). ``slack``: how far in leaf
  probability a flow stopped at residual ``tol`` may land from the fixed point.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> v = flow_reaches_fixed_point(tree, "k1_reward")
    >>> float(v.margin) >= -float(v.slack)  # the k1-in-reward flow stops at π*_β
    True
  """
  flow = fixed_points.flow_to_fixed_point(tree, construct, tol=tol, max_steps=max_steps)
  lhs = jnp.exp(leaf_policy(tree, flow.log_pi))
  rhs = jnp.exp(leaf_policy(tree, fixed_points.closed_form_fixed_point(tree, construct)))
  gap = jnp.max(jnp.where(leaf_mask(tree) & _real(tree)[..., None], jnp.abs(lhs - rhs), 0.0))
  return _zero(gap, applies=flow.residual < tol, slack=slack)

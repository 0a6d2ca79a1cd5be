r"""G1–G4 of THEORY.md part G (token level, this project's) as statements: sides, margin, slack.

Every function is unbatched over instances (one :class:`~nondecoupling.theory.tree.instance.TreeInstance`
with its prompt axis) and returns a :class:`~nondecoupling.theory.verdict.Verdict`; statements on a
policy take per-level probe logits θ. Each side comes from a different route:

- level recursions of :mod:`nondecoupling.theory.tree` (bottom-up values, top-down reach, node
  fields in closed form), against
- the sequence level: the leaf set as an atomic instance (:func:`~.tree.atomic.leaf_instance`) and
  the atomic engine of parts A–B (Gibbs tilt, KL, J), with ``jax.grad`` through the sequence
  probabilities for the gradient identities, and ``jax.grad`` of the stop-gradient surrogate for
  the expected gradients of per-token losses.

Identities report minus the relative residual (max(1, |lhs|, |rhs|)) at the entry (prompt or leaf)
nearest to failing; gradient identities minus max |difference| / max(1, max |autodiff side|), as B5
does; zero statements minus the size / max(1, size) (G4: / max(1, max |∇J|)).

Slacks (computed per tree; model and N of :mod:`nondecoupling.theory.tree.rounding`: slack =
γ_N S, N = real slots + T + OPS). Per prompt, with LR = Σ_t max |log ρ(a|s)|, RB = Σ_t max |r|/β,
U = Σ_t max |V(s)/β| (soft values), LP(π) = Σ_t max (|θ| + |log π(a|s)|) (a chain of T
log-softmaxes), CE = Σ_y d |log π(y)|, LD = max_{d>0} |log(d(y)/|y|)| + log T + 1:

- G1 soft_value_is_log_partition: S = 2 LR + U + 5 RB + |lhs| + |rhs| (the bottom-up logsumexp
  chain; the atomic log ρ(y) = path sum, the centring E_ρ r/β and K = log E_ρ e^c of the tilt).
- G1 bellman_policy_is_tilt, per leaf: S = 3 LR + 2U + RB + LP(π*) + S_{log π*}(y), the last the
  atomic tilt's scale (:func:`~nondecoupling.theory.rounding.gibbs_scale`).
- G2 token_sum_is_sequence_loss: S = E_w[CE (5 + T max|log d|) + 2 LP(π)] (data reach masses
  D(s) = e^{logsumexp} carry T max|log d| relative error).
- G2 token_sum_gradient: S = G_sft (2 + T max|log d|), G the gradient scale
  (:func:`~nondecoupling.theory.tree.rounding.gradient_scale`).
- G2 token_mean_optimum, per leaf: S = (2T + 2) LD + |lhs| + |rhs|.
- G2 token_mean_stationary: S = 2 max_x w_x Σ_y m(y)(1 + |log π(y)|) × (1 + (2T + 2) LD),
  m = d/|y| (the gradient's terms times the relative error of π_mean's logits).
- G2 token_mean_excess: S = E_w[Σ_y d(|log d| + |log π_mean|)(2 + (2T + 2) LD)] + 4 log T
  + |lhs| + |rhs|.
- G3 gradient identities and k1_loss_has_no_gradient: S = G_KL (Σ_y π(1 + |log π| + |log ρ|)
  plus the reach-weighted node sums Σ_s P(s) Σ_a (π + ρ)(1 + |k1| + k1²), doubled).
- G3 k3_value_is_kl, per prompt: S = node sum + Σ_y π(1 + |log π| + |log ρ|) + LP(π) + LR
  + |lhs| + |rhs|.
- G4 fixed points: S = G_{J_β} (2 + P), G_{J_β} = gradient scale of ∇J − β∇KL at the closed form,
  P the log-space scale of the closed form's logits (k1: LR + 2U + RB + LP; k2: LR + Σ_t max|Q|/β
  + LP; k3: LR + Σ_t max|log(u + δ)| + |log β| + LP), plus for k3 the root finder's stopping
  tolerance: G T ``K3_ROOT_TOL`` (1 + |log β| + LR) (absolute).
- G4 flows: the first-order distance bound of :mod:`nondecoupling.theory.tree.stopping` from the
  stopping residual, plus γ_N (2 + LP(π_flow) + LP(π^c)) for the two leaf probabilities. A flow
  statement applies only where the flow met its tolerance and that bound is below
  :data:`~nondecoupling.theory.tree.stopping.FIRST_ORDER_LEVEL`.

G5 (length normalisation in group policy gradients) needs the distribution of a group of leaves;
:func:`~.tree.fields.reinforce_field` with a sequence weight is its building block.

References: THEORY.md G1–G4 (this project's); N. J. Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed. (2002), §3.1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import objectives as atomic
from .._numerics import safe_log
from ..rounding import abs_log, gibbs_scale
from ..tree import bellman, fixed_points, kl, sft
from ..tree.atomic import leaf_instance, leaf_policy
from ..tree.fields import weighted
from ..tree.instance import TreeInstance, support
from ..tree.objectives import reward_to_go
from ..tree.policy import (
  Levels,
  flat_slots,
  leaf_lengths,
  leaf_mask,
  logits_of,
  policy_log_probs,
  reference_log_probs,
)
from ..tree.rounding import gradient_scale, leaf_sum, level_sum, node_kl_sum, tree_slack
from ..tree.stopping import FIRST_ORDER_LEVEL, distance_bound
from ..verdict import Verdict, identity
from .token_parts import (  # noqa: F401 - is_depth_one is re-exported
  _finite_abs,
  _gradients,
  _kl_scale,
  _log_policy_scale,
  _max_abs,
  _real,
  _reward_over_beta,
  _scale,
  _sequence_kl,
  _sequence_reward,
  _surrogate_grad,
  _worst,
  _zero,
  is_depth_one,
)

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
  values, _ = bellman.soft_bellman(tree)
  lr = level_sum(tree, reference_log_probs(tree))
  scale = 2.0 * lr + level_sum(tree, values, on_rows=True) + 5.0 * _reward_over_beta(tree)
  return _worst(tree, values[0][..., 0], atomic.log_partition(inst), _real(tree), scale)


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
  values, log_star = bellman.soft_bellman(tree)
  inst = leaf_instance(tree)
  lhs = leaf_policy(tree, log_star)
  rhs = atomic.gibbs_tilt(inst)
  lr = level_sum(tree, reference_log_probs(tree))
  per_prompt = (3.0 * lr + 2.0 * level_sum(tree, values, on_rows=True) + _reward_over_beta(tree)
                + level_sum(tree, log_star))
  scale = per_prompt[..., None] + gibbs_scale(inst).log_pi
  return _worst(tree, lhs, rhs, leaf_mask(tree) & _real(tree)[..., None], scale)


# ----------------------------------------------------------------------------- G2

def _data_log_range(tree: TreeInstance) -> jax.Array:
  """[] T max |log d(y)| over the data support (relative error of the data reach masses)."""
  m = jnp.max(jnp.stack([jnp.max(jnp.where((lv.data > 0) & _real(tree)[..., None, None],
                                           _finite_abs(safe_log(lv.data)), 0.0))
                         for lv in tree.levels]))
  return len(tree.levels) * m


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
  leaf_lp = leaf_policy(tree, log_pi)
  lhs = sft.token_sum_loss(tree, log_pi)
  rhs = atomic.sft_loss(inst, leaf_lp)
  ce = jnp.sum(jnp.where(inst.data > 0, inst.data * abs_log(leaf_lp), 0.0), axis=-1)
  per = ce * (5.0 + _data_log_range(tree)) + 2.0 * _log_policy_scale(tree, theta, log_pi)
  scale = atomic.expect(inst, per) + jnp.abs(lhs) + jnp.abs(rhs)
  return identity(lhs, rhs, tree_slack(tree, scale))


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
  log_pi = policy_log_probs(tree, theta)
  scale = gradient_scale(tree, log_pi, beta_kl=0.0, sft=1.0) * (2.0 + _data_log_range(tree))
  return _gradients(sft.token_sum_grad(tree, log_pi), auto, tree, scale)


def _mean_masses(tree: TreeInstance):
  """(m = d/|y| on the flat leaf axis, LD [X]: max |log m| + log T + 1 over supp d)."""
  inst = leaf_instance(tree)
  lengths = flat_slots(leaf_lengths(tree))
  m = jnp.where(inst.data > 0, inst.data / lengths, 0.0)
  ld = jnp.max(jnp.where(m > 0, _finite_abs(safe_log(m)), 0.0), axis=-1)
  return m, ld + jnp.log(float(len(tree.levels))) + 1.0


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
  _, ld = _mean_masses(tree)
  scale = ((2 * len(tree.levels) + 2) * ld)[..., None]
  return _worst(tree, lhs, rhs, (inst.data > 0) & _real(tree)[..., None], scale)


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
  weights, ld = _mean_masses(tree)

  def loss(theta):
    log_pi = leaf_policy(tree, policy_log_probs(tree, theta))
    return atomic.expect(inst, -jnp.sum(jnp.where(weights > 0, weights * log_pi, 0.0), -1))

  log_mean = sft.token_mean_optimum(tree)
  grad = jax.grad(loss)(logits_of(tree, log_mean))
  lp = leaf_policy(tree, log_mean)
  per = 2.0 * jnp.sum(jnp.where(weights > 0, weights * (1.0 + abs_log(lp)), 0.0), axis=-1)
  per = per * (1.0 + (2 * len(tree.levels) + 2) * ld)
  scale = jnp.max(jnp.where(_real(tree), tree.prompt_weights * per, 0.0))
  return _zero(tree, _max_abs(grad, tree), scale)


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
  inst = leaf_instance(tree)
  _, ld = _mean_masses(tree)
  lp = leaf_policy(tree, sft.token_mean_optimum(tree))
  mags = jnp.where(inst.data > 0, inst.data * (abs_log(safe_log(inst.data)) + abs_log(lp)), 0.0)
  per = jnp.sum(mags, axis=-1) * (2.0 + (2 * len(tree.levels) + 2) * ld)
  scale = (atomic.expect(inst, per) + 4.0 * jnp.log(float(len(tree.levels)))
           + jnp.abs(lhs) + jnp.abs(rhs))
  return identity(lhs, rhs, tree_slack(tree, scale))


# ----------------------------------------------------------------------------- G3

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
  return _gradients(closed, jax.grad(lambda t: _sequence_kl(tree, t))(theta), tree,
                    _kl_scale(tree, theta))


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
  return _zero(tree, _max_abs(_surrogate_grad(tree, theta, "k1"), tree), _kl_scale(tree, theta))


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
  return _gradients(closed, _surrogate_grad(tree, theta, "k2"), tree, _kl_scale(tree, theta))


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
  return _gradients(closed, auto, tree, 2.0 * _kl_scale(tree, theta))


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
  return _gradients(closed, auto, tree, _kl_scale(tree, theta), applies=is_depth_one(tree))


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
  return _gradients(closed, _surrogate_grad(tree, theta, "k3"), tree, _kl_scale(tree, theta))


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
  return _gradients(closed, _surrogate_grad(tree, theta, "k3_clamped"), tree,
                    _kl_scale(tree, theta))


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
  log_rho = safe_log(inst.reference)
  rhs = atomic.kl_rows(leaf_policy(tree, log_pi), log_rho)
  scale = (node_kl_sum(tree, log_pi) + leaf_sum(tree, log_pi, abs_log(log_rho))
           + _log_policy_scale(tree, theta, log_pi) + level_sum(tree, reference_log_probs(tree)))
  return _worst(tree, kl.expected_token_sum(tree, log_pi, "k3"), rhs, _real(tree), scale)


# ----------------------------------------------------------------------------- G4

def _autodiff_field(tree: TreeInstance, theta: Levels, construct: str) -> Levels:
  """The ascent field of a construct by jax.grad of sequence-level functions (with w)."""
  grad_j = jax.grad(lambda t: _sequence_reward(tree, t))(theta)
  if construct == "k1_reward":
    kl_part = jax.grad(lambda t: _sequence_kl(tree, t))(theta)
  else:
    kl_part = _surrogate_grad(tree, theta, construct[:2])
  return tuple(a - tree.beta * b for a, b in zip(grad_j, kl_part))


def _closed_form_log_scale(tree: TreeInstance, log_pi: Levels, construct: str) -> jax.Array:
  """[] P: the log-space error scale of the closed form's logits (module docstring)."""
  lr = level_sum(tree, reference_log_probs(tree))
  lp = level_sum(tree, log_pi)
  if construct == "k1_reward":
    values, _ = bellman.soft_bellman(tree)
    per = lr + 2.0 * level_sum(tree, values, on_rows=True) + _reward_over_beta(tree) + lp
  elif construct == "k2_loss":
    q, _ = reward_to_go(tree, log_pi)
    per = lr + level_sum(tree, tuple(a / tree.beta for a in q)) + lp
  else:
    # log(u + δ) = log β + log ρ − log π on the support (the denominators of the k3 rows).
    den = tuple(jnp.where(support(lv), jnp.log(tree.beta) + lq - a, 0.0)
                for lv, lq, a in zip(tree.levels, reference_log_probs(tree), log_pi))
    per = lr + level_sum(tree, den) + _finite_abs(jnp.log(tree.beta)) + lp
  return jnp.max(jnp.where(_real(tree), per, 0.0))


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
  log_pi = fixed_points.closed_form_fixed_point(tree, construct)
  theta = logits_of(tree, log_pi)
  field = _autodiff_field(tree, theta, construct)
  size = _max_abs(jax.grad(lambda t: _sequence_reward(tree, t))(theta), tree)
  g = gradient_scale(tree, log_pi, beta_kl=tree.beta, reward=1.0)
  scale = g * (2.0 + _closed_form_log_scale(tree, log_pi, construct))
  extra = 0.0
  if construct == "k3_loss":
    lr = jnp.max(jnp.where(_real(tree), level_sum(tree, reference_log_probs(tree)), 0.0))
    extra = (g * len(tree.levels) * fixed_points.K3_ROOT_TOL
             * (1.0 + _finite_abs(jnp.log(tree.beta)) + lr))
  return _zero(tree, _max_abs(field, tree), scale, norm=jnp.maximum(1.0, size), extra=extra)


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
  log_pi = fixed_points.closed_form_fixed_point(tree, "k2_loss")
  lhs = leaf_policy(tree, log_pi)
  inst = leaf_instance(tree)
  rhs = atomic.gibbs_tilt(inst)
  lr = level_sum(tree, reference_log_probs(tree))
  per_prompt = 3.0 * lr + 2.0 * _reward_over_beta(tree) + 2.0 * level_sum(tree, log_pi)
  scale = per_prompt[..., None] + gibbs_scale(inst).log_pi
  return _worst(tree, lhs, rhs, leaf_mask(tree) & _real(tree)[..., None], scale,
                applies=is_depth_one(tree))


def flow_reaches_fixed_point(tree: TreeInstance, construct: str, tol: float = 1e-11,
                             max_steps: int = 200_000) -> Verdict:
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
  closed = fixed_points.closed_form_fixed_point(tree, construct)
  lhs = jnp.exp(leaf_policy(tree, flow.log_pi))
  rhs = jnp.exp(leaf_policy(tree, closed))
  gap = jnp.max(jnp.where(leaf_mask(tree) & _real(tree)[..., None], jnp.abs(lhs - rhs), 0.0))
  bound = distance_bound(tree, flow.log_pi, flow.residual, construct)
  lp = level_sum(tree, flow.log_pi) + level_sum(tree, closed)
  scale = 2.0 + jnp.max(jnp.where(_real(tree), 2.0 * lp, 0.0))
  applies = (flow.residual < tol) & (bound < FIRST_ORDER_LEVEL)
  return _zero(tree, gap, scale, extra=jnp.where(jnp.isfinite(bound), bound, 0.0), applies=applies)

r"""G4: the fixed points of the per-token KL constructs with the exact policy gradient of J.

With Q^π(s, a) = E_π[r | s·a] and V^π(s) = Σ_a π(a|s) Q^π(s, a), the expected ascent fields are
(per prompt; P_π(s) the reach, F_s = diag π(·|s) − π(·|s)π(·|s)ᵀ, k1 = log π/ρ, K the subtree KL):

- ``k1_reward`` (k1 in the reward):  P_π(s) F_s (Q^π(s,·) − β(k1(s,·) + K(s·)))  = ∇J_β;
- ``k2_loss``  (k2 in the loss):    P_π(s) F_s (Q^π(s,·) − β k1(s,·));
- ``k3_loss``  (k3 in the loss):    P_π(s) (F_s Q^π(s,·) − β(π(·|s) − ρ(·|s))).

Their zeros (P_π(s) > 0 on every node of a softmax policy), THEORY.md G4:

- k1 in the reward: the Gibbs tilt π*_β (G1, :mod:`.bellman`);
- k2 in the loss: π(a|s) ∝ ρ(a|s) e^{Q^π(s,a)/β} (a tilt by expected reward, not by soft value);
- k3 in the loss: π(a|s) = βρ(a|s) / (β + V^π(s) − Q^π(s,a)) (at depth 1: π_i = βρ_i/(β + J − r_i)).

Q^π(s, ·) depends only on the policy below s, so iterating each closed form converges in one
bottom-up sweep (backward induction, :func:`closed_form_fixed_point`). At a node of the k3 form,
with δ_a = max Q − Q_a ≥ 0 and u = β + V − max Q, u solves Σ_a βρ_a/(u + δ_a) = 1, a decreasing
function of u with the root in [βρ(argmax), β]: Newton's method on log Σ βρ_a/(u + δ_a) in log u,
kept inside the bracket by bisection, then log π_a = log β + log ρ_a − log(u + δ_a) (no
cancellation). :func:`flow_to_fixed_point` finds the same points by flowing the
field divided by the reach (same zeros) to stationarity with Euler steps.

References: THEORY.md G4 (this project's); verl/tunix KL placements (research/fusion-methods.md
addendum); this project's D4 for the frontier regret (:func:`fixed_point_report`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._numerics import NEG_INF, masked_dot, masked_max, safe_log
from ..frontier import decoupling_regret
from ..objectives import fisher_matvec
from .atomic import leaf_instance, leaf_policy
from .bellman import optimal_policy
from .instance import TreeInstance, support
from .objectives import (
  expect,
  kl,
  kl_subtrees,
  log_ratios,
  regularized_reward,
  reward,
  reward_to_go,
  sft_excess,
  sft_loss,
)
from .policy import (
  Levels,
  gather_rows,
  initial_logits,
  log_reach,
  node_log_softmax,
  policy_log_probs,
  reference_log_probs,
)

__all__ = ["CONSTRUCTS", "K3_ROOT_STEPS", "K3_ROOT_TOL", "local_ascent", "natural_direction", "ascent_field",
           "closed_form_fixed_point", "flow_to_fixed_point", "FlowResult", "fixed_point_report",
           "stationarity_residual"]

CONSTRUCTS = ("k1_reward", "k2_loss", "k3_loss")
K3_ROOT_STEPS = 200  # safeguarded Newton steps at most (bisection alone needs < 80 for 1e-20)
K3_ROOT_TOL = 1e-15  # a row is done when Newton would move log u by less than this (relative)


def _check(construct: str) -> None:
  if construct not in CONSTRUCTS:
    raise ValueError(f"construct is {construct!r}, expected one of {', '.join(CONSTRUCTS)}")


def _slot_values(tree: TreeInstance, log_pi: Levels, construct: str) -> Levels:
  """v(s, ·) with field P F v: Q − β(k1 + K(s·)), Q − β k1, or Q (k3, whose field adds −β(π − ρ))."""
  _check(construct)
  q, _ = reward_to_go(tree, log_pi)
  if construct == "k1_reward":
    qk, _ = kl_subtrees(tree, log_pi)
    return tuple(a - tree.beta * b for a, b in zip(q, qk))
  if construct == "k2_loss":
    return tuple(a - tree.beta * b for a, b in zip(q, log_ratios(tree, log_pi)))
  return q


def _local(tree: TreeInstance, log_pi: Levels, construct: str, v: Levels) -> Levels:
  out = []
  for lv, lp, vt in zip(tree.levels, log_pi, v):
    pi = jnp.exp(lp)
    g = fisher_matvec(pi, jnp.where(support(lv), vt, 0.0))
    if construct == "k3_loss":
      g = g - tree.beta * (pi - lv.reference)
    out.append(jnp.where(support(lv), g, 0.0))
  return tuple(out)


def _natural(tree: TreeInstance, log_pi: Levels, construct: str, v: Levels) -> Levels:
  out = []
  for lv, lp, vt in zip(tree.levels, log_pi, v):
    sup = support(lv)
    vt = jnp.where(sup, vt, 0.0)
    d = vt - masked_dot(jnp.exp(lp), vt, keepdims=True)
    if construct == "k3_loss":
      ratio = jnp.exp(jnp.where(sup, safe_log(lv.reference) - jnp.where(sup, lp, 0.0), 0.0))
      d = d - tree.beta * (1.0 - ratio)
    out.append(jnp.where(sup, d, 0.0))
  return tuple(out)


def local_ascent(tree: TreeInstance, log_pi: Levels, construct: str) -> Levels:
  """The ascent field of a construct divided by the reach P_π(s), per level (0 off the support).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> max(float(jnp.abs(a).max()) for a in local_ascent(tree, optimal_policy(tree), "k1_reward")) < 1e-15
    True
  """
  return _local(tree, log_pi, construct, _slot_values(tree, log_pi, construct))


def natural_direction(tree: TreeInstance, log_pi: Levels, construct: str) -> Levels:
  r"""F_s^+ (local ascent): v − π·v (k3: Q − π·Q − β(1 − ρ/π)), the natural-gradient direction.

  F_s (g/π) = g for every g with Σ_a g_a = 0, so the direction is the local ascent divided by π
  slot-wise, written without the division.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> max(float(jnp.abs(a).max()) for a in natural_direction(tree, optimal_policy(tree), "k1_reward")) < 1e-15
    True
  """
  return _natural(tree, log_pi, construct, _slot_values(tree, log_pi, construct))


def ascent_field(tree: TreeInstance, log_pi: Levels, construct: str) -> Levels:
  """The expected ascent field of a construct, per prompt: P_π(s) × :func:`local_ascent`.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> # ∇J_β at ρ = ∇J
    >>> [a.tolist() for a in ascent_field(tree, reference_log_probs(tree), "k1_reward")]
    [[[[-0.125, 0.125]]], [[[-0.125, 0.125]]]]
  """
  reach = log_reach(tree, log_pi)
  return tuple(jnp.exp(r)[..., None] * g
               for r, g in zip(reach, local_ascent(tree, log_pi, construct)))


def stationarity_residual(tree: TreeInstance, log_pi: Levels, construct: str) -> jax.Array:
  """[] max over real prompts, nodes and slots of |local ascent| (0 at a fixed point).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.policy import reference_log_probs
    >>> # π = ρ is not stationary
    >>> float(stationarity_residual(tree, reference_log_probs(tree), "k1_reward"))
    0.25
  """
  real = tree.prompt_weights > 0
  worst = [jnp.max(jnp.where(real[..., None, None], jnp.abs(g), 0.0))
           for g in local_ascent(tree, log_pi, construct)]
  return jnp.max(jnp.stack(worst))


def _k3_rows(q: jax.Array, log_rho: jax.Array, sup: jax.Array, beta) -> jax.Array:
  """log π of the k3 fixed point at every row given Q (safeguarded Newton in log u, module doc)."""
  top = masked_max(q, sup)
  any_slot = jnp.any(sup, axis=-1)
  top = jnp.where(any_slot, top, 0.0)
  delta = jnp.where(sup, top[..., None] - q, 0.0)
  rho_top = jnp.sum(jnp.where(sup & (delta == 0), jnp.exp(log_rho), 0.0), axis=-1)
  log_beta = jnp.log(beta)

  def excess(z):
    """h(z) = log Σ βρ/(e^z + δ) (decreasing; 0 at the root) and h'(z)."""
    log_den = jnp.log(jnp.exp(z)[..., None] + delta)
    terms = jnp.where(sup, log_beta + log_rho - log_den, NEG_INF)
    h = jax.nn.logsumexp(jnp.where(any_slot[..., None], terms, 0.0), axis=-1)
    weights = jnp.where(sup, jnp.exp(terms - h[..., None]), 0.0)
    slope = -jnp.sum(weights * jnp.exp(z[..., None] - log_den), axis=-1)
    return jnp.where(any_slot, h, 0.0), jnp.where(any_slot, slope, -1.0)

  def cond(state):
    _, _, _, _, moved, i = state
    return moved & (i < K3_ROOT_STEPS)

  def body(state):
    lo, hi, z, (h, slope), _, i = state
    lo, hi = jnp.where(h > 0, z, lo), jnp.where(h > 0, hi, z)
    newton = z - h / slope
    done = jnp.abs(newton - z) <= K3_ROOT_TOL * jnp.maximum(1.0, jnp.abs(z))
    new = jnp.where(done, z, jnp.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi)))
    return lo, hi, new, excess(new), jnp.any(~done), i + 1

  lo = log_beta + jnp.log(jnp.where(any_slot, rho_top, 1.0))
  hi = jnp.broadcast_to(log_beta, lo.shape)
  init = (lo, hi, hi, excess(hi), jnp.asarray(True), jnp.asarray(0))
  _, _, z, _, _, _ = jax.lax.while_loop(cond, body, init)
  logits = jnp.where(sup, log_beta + log_rho - jnp.log(jnp.exp(z)[..., None] + delta), NEG_INF)
  return node_log_softmax(logits, sup)  # renormalise the last rounding


def closed_form_fixed_point(tree: TreeInstance, construct: str) -> Levels:
  r"""log π of a construct's fixed point per level, by backward induction on its closed form.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> pi = jnp.exp(closed_form_fixed_point(tree, "k3_loss")[0][0, 0])
    >>> [round(float(v), 6) for v in pi]  # β ρ_i / (β + J − r_i): (1 − √½, √½)
    [0.292893, 0.707107]
  """
  _check(construct)
  if construct == "k1_reward":
    return optimal_policy(tree)
  log_rho = reference_log_probs(tree)
  n = len(tree.levels)
  out = [None] * n
  below = None
  for t in reversed(range(n)):
    lv = tree.levels[t]
    sup = support(lv)
    q = jnp.where(lv.leaf, lv.reward, 0.0)
    if below is not None:
      q = jnp.where(lv.internal, gather_rows(below, lv.child), q)
    q = jnp.where(sup, q, 0.0)
    if construct == "k2_loss":
      lp = node_log_softmax(log_rho[t] + q / tree.beta, sup)
    else:
      lp = _k3_rows(q, log_rho[t], sup, tree.beta)
    out[t] = lp
    below = jnp.where(lv.node, masked_dot(jnp.exp(lp), q), 0.0)
  return tuple(out)


class FlowResult(NamedTuple):
  """The end of a flow to stationarity: log-policy, final residual, Euler steps taken."""

  log_pi: Levels
  residual: jax.Array
  steps: jax.Array


def flow_to_fixed_point(tree: TreeInstance, construct: str, theta0: Levels | None = None,
                        tol: float = 1e-11, max_steps: int = 100_000,
                        geometry: str = "natural", step: jax.Array | None = None) -> FlowResult:
  r"""Flows the logits along a construct's field from θ₀ (default log ρ) until it is stationary.

  Two geometries with the same stationary points (P_π(s) > 0 and F_s is invertible on the
  tangent space of a full-support row):

  - ``"euclidean"``: θ̇_s = (field)_s / P_π(s), gradient ascent in logits with each node's reach
    divided out; Euler steps η = 1/(β + max|r|). Slow where π(·|s) is peaked (the rate is
    about β min_a π(a|s)).
  - ``"natural"``: θ̇_s = F_s^+ (field)_s / P_π(s) (:func:`natural_direction`), the natural
    policy gradient flow; Euler steps η = 1/(2β) for the tilts (k1, k2: the error of a node
    halves every step once its subtree has converged) and 1/(β + 2 max|r|) for k3: at its fixed
    point π = βρ/(β + V − Q) the linearised flow's rates are β ρ/π = β + V − Q ≤ β + 2 max|r|
    (Q and V are expected rewards, within ±max|r|), so η times the fastest rate is at most 1
    and no mode overshoots. (Half that step until 4 December: 95,547 Euler steps on ``verify``'s
    112 k3 trees of seed 0, 8 of them stopped by the budget; now 59,984 and 4, the same trees
    converging to the same fixed points.)

  Stops when the largest |local ascent| over real prompts is below ``tol`` or after
  ``max_steps`` (``residual`` tells which).

  Args:
    tree: an unbatched tree.
    construct: one of :data:`CONSTRUCTS`.
    theta0: start logits (default log ρ).
    tol: stop when max |local ascent| < tol.
    max_steps: step budget.
    geometry: ``"natural"`` or ``"euclidean"``.
    step: the Euler step (default as above).

  Returns:
    A :class:`FlowResult`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> end = flow_to_fixed_point(tree, "k1_reward")
    >>> [jnp.exp(lp).round(6).tolist() for lp in end.log_pi] == [jnp.exp(lp).round(6).tolist() for lp in optimal_policy(tree)]
    True
  """
  _check(construct)
  if geometry not in ("natural", "euclidean"):
    raise ValueError(f"geometry is {geometry!r}, expected 'natural' or 'euclidean'")
  theta0 = initial_logits(tree) if theta0 is None else theta0
  if step is None:
    r_max = jnp.max(jnp.stack([jnp.max(jnp.where(lv.leaf, jnp.abs(lv.reward), 0.0))
                               for lv in tree.levels]))
    if geometry == "euclidean":
      step = 1.0 / (tree.beta + r_max)
    elif construct == "k3_loss":
      step = 1.0 / (tree.beta + 2.0 * r_max)
    else:
      step = 0.5 / tree.beta
  real = (tree.prompt_weights > 0)[..., None, None]

  def ascent(theta):
    log_pi = policy_log_probs(tree, theta)
    v = _slot_values(tree, log_pi, construct)
    g = _local(tree, log_pi, construct, v)
    res = jnp.max(jnp.stack([jnp.max(jnp.where(real, jnp.abs(a), 0.0)) for a in g]))
    if geometry == "natural":
      g = _natural(tree, log_pi, construct, v)
    return g, res

  def cond(state):
    _, _, res, i = state
    return (res >= tol) & (i < max_steps)

  def body(state):
    theta, g, _, i = state
    theta = tuple(th + step * gt for th, gt in zip(theta, g))
    return (theta, *ascent(theta), i + 1)

  theta, _, res, steps = jax.lax.while_loop(cond, body, (theta0, *ascent(theta0), jnp.asarray(0)))
  return FlowResult(policy_log_probs(tree, theta), res, steps)


def fixed_point_report(tree: TreeInstance, log_pi: Levels) -> dict:
  """SFT loss, SFT excess, reward, J_β, frontier regret and E_w KL(π‖π*_β) of a tree policy.

  The regret is this project's D4 on the leaf set (every leaf distribution is a tree policy).

  Returns:
    dict of [] arrays: ``sft_loss``, ``sft_excess``, ``reward``, ``regularized_reward``,
    ``regret``, ``kl_to_optimum``, ``kl_to_reference``.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> report = fixed_point_report(tree, optimal_policy(tree))
    >>> round(float(report["regularized_reward"]), 6), round(float(report["kl_to_optimum"]), 6)
    (0.357374, 0.0)
  """
  inst = leaf_instance(tree)
  return {
      "sft_loss": sft_loss(tree, log_pi),
      "sft_excess": sft_excess(tree, log_pi),
      "reward": reward(tree, log_pi),
      "regularized_reward": regularized_reward(tree, log_pi),
      "regret": decoupling_regret(inst, leaf_policy(tree, log_pi)),
      "kl_to_optimum": expect(tree, kl(tree, log_pi, optimal_policy(tree))),
      "kl_to_reference": expect(tree, kl(tree, log_pi)),
  }

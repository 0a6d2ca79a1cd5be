r"""Rounding scales of the token-level computations (G1–G4), from which each tree statement builds its slack.

The model is the one of :mod:`nondecoupling.theory.verdict` (Higham ch. 3): every operation is
exact up to a relative error u, transcendental functions to a few u, and a computed quantity whose
terms have magnitudes summing to S is accurate to γ_N S. For a tree

.. math:: N = \underbrace{\textstyle\sum_x \sum_t \#\{(s, a) \in \mathrm{supp}\}}_{\text{nodes} \times k}
          + T + \texttt{OPS},

the number of real slots (the terms any sum of a tree statement runs over), plus the depth T for
the chain of logsumexps and reach products, plus the per-entry allowance ``OPS`` of
:mod:`~nondecoupling.theory.verdict`. N is counted on the real support of each tree (not the padded
bucket), so small trees get small bounds. The scales (all [X], per prompt, ≥ 0):

- :func:`level_sum` (log-space conditioning): a logsumexp over a row of values of absolute error η
  has error η + u(|result| + max|value|); a chain of T of them (bottom-up soft values, top-down
  reach, leaf log-probabilities as path sums of T log-conditionals) accumulates the per-level
  errors, so its scale is Σ_t max_{(s,a) at level t} |value| (the path sum of the largest
  magnitudes: a bound on every path's |log ρ(y)|, |log π(y)|, Σ_t |V(s_t)/β|).
- :func:`leaf_sum` (products along a path): π(y) = e^{log π(y)} of a log of absolute error η has
  relative error η, so a term π(y) g(y) of a sum over leaves has error ≤ π(y)(|g| + η); its scale
  is Σ_y π(y)(|g(y)| + |log π(y)|).
- :func:`node_kl_sum` (per-token estimators and jax.grad): the reach-weighted node sums
  Σ_s P(s) Σ_a (π + ρ)(1 + |k1| + k1²) bound what the k1/k2/k3 surrogates, their gradients and the
  closed-form node fields sum (e^{−k1} π = ρ; ½ k1² has relative error 2|k1|u).
- :func:`gradient_scale`: the backward pass of a sequence-level function E_w Σ_y π(y) g(y)
  through T log-softmaxes (the Jacobian of a softmax row is bounded by 2π) gives every logit an
  error of at most γ_N Σ_y (2π(y)(1 + |g(y)|) + …), with g = log π − log ρ (KL), r (reward) and
  −log π weighted by d (SFT); the error of any one entry is bounded by the whole sum.

References:
  N. J. Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., SIAM (2002), §3.1, §3.4;
  THEORY.md part G; :mod:`nondecoupling.theory.verdict`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._numerics import safe_log, unit_roundoff
from ..rounding import abs_log
from ..verdict import OPS
from .atomic import leaf_instance, leaf_policy
from .instance import TreeInstance, support
from .policy import Levels, leaf_mask, log_reach, reference_log_probs

__all__ = ["term_count", "tree_gamma", "tree_slack", "level_sum", "leaf_sum", "node_kl_sum",
           "gradient_scale", "real_prompts"]


def real_prompts(tree: TreeInstance) -> jax.Array:
  """[X] bool: prompts of positive weight (padding has weight 0).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> real_prompts(tree).tolist()
    [True]
  """
  return tree.prompt_weights > 0


def term_count(tree: TreeInstance) -> jax.Array:
  """[] N = real support slots + depth + ``OPS`` (module docstring), as a float.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> int(term_count(tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))))
    67
  """
  real = real_prompts(tree)[..., None, None]
  slots = sum(jnp.sum(support(lv) & real) for lv in tree.levels)
  return jnp.asarray(slots + len(tree.levels) + OPS, jnp.float64)


def tree_gamma(tree: TreeInstance) -> jax.Array:
  """[] γ_N = N u / (1 − N u) with N = :func:`term_count`.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> f"{float(tree_gamma(tree)):.3e}"  # N = 67: 67 u / (1 − 67 u)
    '7.438e-15'
  """
  nu = term_count(tree) * unit_roundoff(jnp.float64)
  return nu / (1.0 - nu)


def tree_slack(tree: TreeInstance, scale, extra=0.0) -> jax.Array:
  r"""γ_N S + extra + N t [S > 0] (absolute), t the smallest normal number.

  Args:
    tree: the tree (for N).
    scale: S ≥ 0, any shape.
    extra: further absolute error terms (e.g. a root finder's tolerance).

  Returns:
    The absolute rounding bound, the shape of ``scale``.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> f"{float(tree_slack(tree, jnp.asarray(1.0))):.3e}"  # 67 u
    '7.438e-15'
  """
  scale = jnp.asarray(scale, jnp.float64)
  floor = term_count(tree) * float(jnp.finfo(jnp.float64).tiny)
  return tree_gamma(tree) * scale + extra + jnp.where(scale > 0, floor, 0.0)


def _finite_abs(a: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(a), jnp.abs(jnp.where(jnp.isfinite(a), a, 0.0)), 0.0)


def level_sum(tree: TreeInstance, per_level: Levels, on_rows: bool = False) -> jax.Array:
  r"""[X] Σ_t max over the support of level t of |a| (non-finite entries count 0).

  Args:
    tree: the tree.
    per_level: per level [X, N_t, k] slot values (or [X, N_t] row values with ``on_rows``).
    on_rows: the values are per row (node), masked by the node mask.

  Returns:
    [X] the path-sum scale of a chain of T log-space operations (module docstring).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> level_sum(tree, (jnp.array([[[-3.0, 2.0]]]),)).tolist()
    [3.0]
  """
  out = 0.0
  for lv, a in zip(tree.levels, per_level):
    mask = lv.node if on_rows else support(lv)
    out = out + jnp.max(jnp.where(mask, _finite_abs(a), 0.0), axis=(-2, -1) if not on_rows else -1)
  return out


def leaf_sum(tree: TreeInstance, log_pi: Levels, g: jax.Array | None = None) -> jax.Array:
  r"""[X] Σ_y π(y)(1 + |log π(y)| + |g(y)|) over leaves (π(y) from the per-level ``log_pi``).

  Args:
    tree: the tree.
    log_pi: per-level log-conditionals of a policy.
    g: optional [X, L] flat per-leaf magnitudes (leaf axis of :func:`~.policy.flat_slots`).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> round(float(leaf_sum(tree, (jnp.log(jnp.array([[[0.5, 0.5]]])),))[0]), 6)  # 1 + log 2
    1.693147
  """
  lp = leaf_policy(tree, log_pi)
  mask = leaf_mask(tree)
  pi = jnp.where(mask, jnp.exp(lp), 0.0)
  extra = 0.0 if g is None else _finite_abs(g)
  return jnp.sum(jnp.where(mask, pi * (1.0 + abs_log(lp) + extra), 0.0), axis=-1)


def node_kl_sum(tree: TreeInstance, log_pi: Levels) -> jax.Array:
  r"""[X] Σ_s P_π(s) Σ_a (π(a|s) + ρ(a|s))(1 + |k1| + k1²), k1 = log π(a|s) − log ρ(a|s).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> float(node_kl_sum(tree, (jnp.log(jnp.array([[[0.5, 0.5]]])),))[0])  # π = ρ: Σ (π + ρ)
    2.0
  """
  reach = log_reach(tree, log_pi)
  out = 0.0
  for lv, lp, lq, r in zip(tree.levels, log_pi, reference_log_probs(tree), reach):
    sup = support(lv)
    k1 = jnp.where(sup, jnp.where(sup, lp, 0.0) - jnp.where(sup, lq, 0.0), 0.0)
    k1 = _finite_abs(k1)
    w = jnp.where(sup, jnp.exp(jnp.where(sup, lp, -jnp.inf)) + lv.reference, 0.0)
    row = jnp.sum(w * (1.0 + k1 + k1 * k1), axis=-1)
    out = out + jnp.sum(jnp.where(lv.node, jnp.exp(r) * row, 0.0), axis=-1)
  return out


def gradient_scale(tree: TreeInstance, log_pi: Levels, beta_kl=1.0, reward=0.0,
                   sft=0.0) -> jax.Array:
  r"""[] max_x w_x S_x: the error scale of a gradient field at the policy ``log_pi``.

  .. math:: S_x = 2\Big[\beta_{KL}\big(\textstyle\sum_y \pi(1 + |\log\pi| + |\log\rho|)
            + \text{node\_kl\_sum}\big) + c_r \sum_y \pi(1 + |r|)
            + c_d \sum_y d\,(1 + |\log\pi|)\Big]

  (the factor 2 bounds the softmax Jacobian; module docstring).

  Args:
    tree: the tree.
    log_pi: per-level log-policy the field is evaluated at.
    beta_kl: weight of the KL parts (β for J_β, 1 for the KL gradient alone, 0 for none).
    reward: weight of the reward part (1 when ∇J enters).
    sft: weight of the SFT part (1 when ∇L enters).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> from nondecoupling.theory.tree.policy import initial_logits, policy_log_probs
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> log_pi = policy_log_probs(tree, initial_logits(tree))
    >>> float(gradient_scale(tree, log_pi, beta_kl=0.0, reward=1.0))  # 2 Σ_y π(y)(1 + |r(y)|)
    3.0
  """
  inst = leaf_instance(tree)
  lp = leaf_policy(tree, log_pi)
  mask = leaf_mask(tree)
  pi = jnp.where(mask, jnp.exp(lp), 0.0)
  log_rho = jnp.where(mask, safe_log(inst.reference), 0.0)
  kl_part = leaf_sum(tree, log_pi, abs_log(log_rho)) + node_kl_sum(tree, log_pi)
  reward_part = jnp.sum(pi * (1.0 + jnp.abs(inst.reward)), axis=-1)
  sft_part = jnp.sum(jnp.where(inst.data > 0, inst.data * (1.0 + abs_log(lp)), 0.0), axis=-1)
  per = 2.0 * (beta_kl * kl_part + reward * reward_part + sft * sft_part)
  return jnp.max(jnp.where(real_prompts(tree), tree.prompt_weights * per, 0.0))

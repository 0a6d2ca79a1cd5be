r"""How far a G4 flow stopped at residual ε can be from the closed-form fixed point (first order).

:func:`~.fixed_points.flow_to_fixed_point` stops when ε = max_{s,a} |g_a(s)| < tol, with g the
local ascent π(a|s) d_a(s) and d the natural direction (:func:`~.fixed_points.natural_direction`).
Bottom-up over the levels, with δ_t a bound on max |log π(a|s) − log π^c(a|s)| at level t (π the
flow's policy, π^c the closed form of :func:`~.fixed_points.closed_form_fixed_point`),
m_t = min π(a|s) and ρ_t = min ρ(a|s) over the real support of level t, R = max |r|,
Δ_t = e^{Σ_{t' > t} δ_{t'}} − 1 (the relative error of every leaf probability below level t):

- node error given the flow's own subtree (π̃ the node's closed form with the flow's Q):

  * tilts (k1 in the reward, k2 in the loss): d = β(log π̃ − log π) − c with
    |c| ≤ max|d| (both rows sum to 1), so ε_t = 2ε / (β m_t);
  * k3 in the loss: π_a = βρ_a / (β + V − Q_a + d_a), and the normalisation moves V by at most
    max|d|, so to first order ε_t = 2ε / (β ρ_t m_t);

- the subtree's error moves the node's target: k1 through the soft value, whose error is
  β KL ≤ β Σ_{t'>t} δ_{t'} (it is stationary at the optimum), so δ_t = ε_t + 2 Σ_{t'>t} δ_{t'};
  k2 through Q (|ΔQ| ≤ R Δ_t), δ_t = ε_t + 2 R Δ_t / β; k3 through Q with the slope
  |∂ log π_a / ∂Q| ≤ 1/(β ρ_t) on both ends, δ_t = ε_t + 4 R Δ_t / (β ρ_t).

Then |π(y) − π^c(y)| ≤ π^c(y)(e^{Σ_t δ_t} − 1) ≤ e^{Σ_t δ_t} − 1 on every leaf. The bound is first
order in ε (it neglects the curvature of the closed forms over the distance it bounds), so a
statement that uses it applies only where it is below :data:`FIRST_ORDER_LEVEL`.

References: THEORY.md G4; :mod:`.fixed_points`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .fixed_points import CONSTRUCTS
from .instance import TreeInstance, support

__all__ = ["FIRST_ORDER_LEVEL", "distance_bound"]

FIRST_ORDER_LEVEL = 1e-6  # the bound is used (the statement applies) only below this


def _level_min(tree: TreeInstance, per_level, real) -> list:
  out = []
  for lv, a in zip(tree.levels, per_level):
    mask = support(lv) & real[..., None, None]
    out.append(jnp.min(jnp.where(mask, a, 1.0)))
  return out


def distance_bound(tree: TreeInstance, log_pi, residual, construct: str) -> jax.Array:
  r"""[] the first-order bound on max_y |π(y) − π^c(y)| of a flow stopped at ``residual``.

  Args:
    tree: an unbatched tree.
    log_pi: per-level log-policy where the flow stopped.
    residual: [] its stationarity residual ε (max |local ascent| over real prompts).
    construct: one of :data:`~.fixed_points.CONSTRUCTS`.

  Returns:
    [] e^{Σ_t δ_t} − 1 (module docstring); +inf where a probability underflowed to 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> lp = (jnp.log(jnp.array([[[0.5, 0.5]]])),)
    >>> f"{float(distance_bound(tree, lp, jnp.asarray(1e-12), 'k2_loss')):.1e}"  # 2ε/(β·½)
    '4.0e-12'
  """
  if construct not in CONSTRUCTS:
    raise ValueError(f"construct is {construct!r}, expected one of {', '.join(CONSTRUCTS)}")
  real = tree.prompt_weights > 0
  beta = tree.beta
  r_max = jnp.max(jnp.stack([jnp.max(jnp.where(lv.leaf & real[..., None, None],
                                               jnp.abs(lv.reward), 0.0)) for lv in tree.levels]))
  m = _level_min(tree, [jnp.exp(lp) for lp in log_pi], real)
  rho = _level_min(tree, [lv.reference for lv in tree.levels], real)
  below = jnp.asarray(0.0)  # Σ_{t' > t} δ_{t'}
  for t in reversed(range(len(tree.levels))):
    if construct == "k3_loss":
      eps = 2.0 * residual / (beta * rho[t] * m[t])
      delta = eps + 4.0 * r_max * jnp.expm1(below) / (beta * rho[t])
    elif construct == "k2_loss":
      delta = 2.0 * residual / (beta * m[t]) + 2.0 * r_max * jnp.expm1(below) / beta
    else:
      delta = 2.0 * residual / (beta * m[t]) + 2.0 * below
    below = below + delta
  return jnp.where(jnp.isfinite(below), jnp.expm1(below), jnp.inf)

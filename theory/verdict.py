r"""The value a statement returns: its two sides, a margin (>= 0 when it holds) and a rounding bound.

A statement is computed in floating point, so its margin carries rounding error. Each
:class:`Verdict` therefore carries ``slack``: a bound, for this instance, on how far rounding can
move the margin. A statement *fails* only when its margin is below ``-slack`` (strict statements:
at or below; with ``slack = 0``, i.e. when every term is exactly zero, a margin of exactly 0 refutes
a strict claim), and a margin inside ``[-slack, 0)`` is rounding, not a counterexample.

How the slack is computed
-------------------------

Model (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): every floating-point
operation is exact up to a relative error ≤ u (unit roundoff, 2⁻⁵³ in float64), and
log, exp, log1p and expm1 are accurate to a few u. Then for a sum of terms each computed with a
relative error ≤ γ_k,

.. math:: |fl(\textstyle\sum_i a_i) - \sum_i a_i| \le \gamma_{n+k}\sum_i |a_i|,
          \qquad \gamma_m = \frac{m u}{1 - m u}.

A statement's margin is such a signed sum over prompts and responses, so its slack is

.. math:: \mathrm{slack} = \gamma_N\,S + N\,t\,[S > 0],\qquad N = |X|\,|Y| + \texttt{OPS},

where ``OPS`` = 64 bounds the operations one entry goes through (a transcendental function counts
a few), t is the smallest normal number (below it relative precision is lost) and S is the
*scale*: the sum of the magnitudes of the terms, with log/exp conditioning where it applies:

- a log of a computed positive quantity of relative error η has absolute error η (so a term
  p·log q contributes p·(1 + |log q|) to S, and a log-probability log π contributes |log π|);
- an exp of a quantity of absolute error η has relative error η (so π = e^{log π} with log π of
  error scale T contributes π·T wherever π multiplies something);
- a square root √x of a quantity of error δ has error ≤ min(√δ, δ/(2√x)) (used for the bounds of
  C2 and D3, whose √ of a KL is not linear in the rounding);
- identities that use Σ_y p(y|x) = 1 (the KL forms of :func:`~.objectives.kl_rows`) add the
  magnitude 1 per row and distribution (rows of a valid instance sum to 1 up to rounding).

The scales of the shared objects (log π*_β and K_x of the Gibbs tilt, KL divergences) are in
:mod:`.rounding`; each statement module builds its S from them, and states it in its docstring.
Per statement:

- B1–B4, C1 (theorem_3_1, c1_is_kl), C4: identities; S = the magnitudes of every sum on both sides
  (cross-entropies Σ d|log π|, rewards Σ π|r|, β × KL scales), as above. The margin is the
  residual relative to max(1, |lhs|, |rhs|), and so is the slack.
- B5, D2 (slope and curvature by autodiff): S = the gradient magnitudes
  Σ w π (|r| + β|log π| + β|log ρ|) that the autodiff path multiplies (see
  :mod:`.statements.identities` and :mod:`.statements.initial_rates`).
- C1 c1_nonnegative, c1_positive_otherwise, c1_zero_iff_constant, the Hoeffding and sup bounds,
  the asymptotes: S = the scale of C₁ (K_x, its conditioning Σ|π* − d||c| and, when the
  max-shifted form is used, max c) plus the magnitudes of the bound's own terms.
- C2 (both forms), D3: linear terms as above plus the √ rule for the KL terms.
- C3 (as printed): S = Σ (π₁ T + π₂)|r|, so a reward that does not vary (all terms exactly 0)
  has slack 0 and its margin of exactly 0 refutes the strict claim.
- D1: root residual: the scale of βC₁ plus the root finder's stopping tolerance (relative step
  1e-14 in 1/β) times the slope E KL(π*‖ρ); sign: the product rule on (log β_c − log β)·βC₁.
- Statements on integrated flows (D2 finite differences, D5, D6, D7): see
  :mod:`nondecoupling.verify.flow_checks`, where the solver's tolerance joins the rounding bound.

References:
  N. J. Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., SIAM (2002), §3.1, §3.4.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._numerics import gamma

__all__ = ["OPS", "Verdict", "gamma_for", "rounding_slack", "identity", "at_most", "at_least", "positive",
           "holds", "fails", "sqrt_error"]

OPS = 64  # operations per entry the rounding bound allows for (transcendentals count a few)


class Verdict(NamedTuple):
  """Sides of a statement on one instance.

  Attributes:
    lhs: [] left-hand side.
    rhs: [] right-hand side.
    margin: [] how far the statement is from failing: >= 0 (or > 0 for strict statements) when
      it holds. Identities use minus the relative residual; ``lhs <= rhs`` uses ``rhs - lhs``.
    applies: [] bool, False where the statement's hypothesis does not hold on this instance
      (vacuous: not counted).
    ratio: [] for bounds, how much of the bound is used (1 = tight), e.g. C₁ / bound; NaN when
      not meaningful.
    slack: [] the rounding bound of the margin, in margin units (module docstring): the margin
      of the exact computation lies within ``slack`` of ``margin``.
  """

  lhs: jax.Array
  rhs: jax.Array
  margin: jax.Array
  applies: jax.Array
  ratio: jax.Array
  slack: jax.Array


def gamma_for(n: int, dtype) -> float:
  """γ_N with N = n + ``OPS``: the relative rounding bound of a sum over n entries.

  Examples:
    >>> import jax.numpy as jnp
    >>> f"{gamma_for(36, jnp.float64):.4e}"  # (36 + 64) u / (1 − 100 u), u = 2⁻⁵³
    '1.1102e-14'
  """
  return gamma(n + OPS, dtype)


def sqrt_error(x, err):
  r"""Error bound of √x when x has absolute error ``err``: min(√err, err / (2√x)) (x ≥ 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> float(sqrt_error(jnp.asarray(0.0), jnp.asarray(1e-16)))
    1e-08
  """
  x = jnp.maximum(x, 0.0)
  pos = x > 0
  return jnp.where(pos, jnp.minimum(jnp.sqrt(err), err / (2.0 * jnp.sqrt(jnp.where(pos, x, 1.0)))),
                   jnp.sqrt(err))


def rounding_slack(scale, n: int, extra=0.0, resolved=None) -> jax.Array:
  r"""γ_N S + extra + N t [S > 0 or resolved], N = n + ``OPS`` (module docstring).

  Args:
    scale: [] S ≥ 0, the sum of the magnitudes of the terms (with their conditioning).
    n: number of terms summed (entries |X||Y| of the instance).
    extra: [] further error terms already in absolute units (e.g. of square roots).
    resolved: [] bool, True when some term is non-zero even if S underflowed to 0.

  Returns:
    [] the absolute rounding bound.

  Examples:
    >>> import jax.numpy as jnp
    >>> f"{float(rounding_slack(jnp.asarray(2.0), 12)):.3e}"  # (12 + 64) u × 2
    '1.688e-14'
  """
  scale = jnp.asarray(scale)
  big_n = n + OPS
  nonzero = scale > 0 if resolved is None else (scale > 0) | resolved
  floor = big_n * float(jnp.finfo(scale.dtype).tiny)
  return gamma_for(n, scale.dtype) * scale + extra + jnp.where(nonzero, floor, 0.0)


def _nan_like(x):
  return jnp.full(jnp.shape(x), jnp.nan, dtype=jnp.result_type(x, float))


def _ratio(used, budget):
  """used / budget where the budget is positive, else NaN."""
  ok = budget > 1e-10  # below this both sides are rounding noise
  return jnp.where(ok, used / jnp.where(ok, budget, 1.0), jnp.nan)


def _applies(applies, like):
  return jnp.broadcast_to(jnp.asarray(applies), jnp.shape(like))


def identity(lhs, rhs, slack, applies=True) -> Verdict:
  """lhs = rhs; margin = −|lhs − rhs| / s, s = max(1, |lhs|, |rhs|); slack (absolute) / s too.

  Examples:
    >>> v = identity(2.0, 2.0 + 4e-16, 1e-15)
    >>> float(v.margin), bool(holds(v.margin, v.slack))  # residual 4e-16 / 2, inside the slack
    (-2.2204460492503126e-16, True)
  """
  scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(lhs), jnp.abs(rhs)))
  resid = jnp.where(lhs == rhs, 0.0, jnp.abs(lhs - rhs))  # inf == inf is exact agreement
  return Verdict(lhs, rhs, -resid / scale, _applies(applies, lhs), _nan_like(lhs),
                 jnp.asarray(slack) / scale)


def at_most(lhs, rhs, slack, applies=True, base=0.0) -> Verdict:
  """lhs <= rhs; margin = rhs − lhs; ratio = (lhs − base)/(rhs − base) (the bound's use).

  Examples:
    >>> v = at_most(1.0, 4.0, 0.0)
    >>> float(v.margin), float(v.ratio)  # rhs − lhs; a quarter of the bound is used
    (3.0, 0.25)
  """
  return Verdict(lhs, rhs, rhs - lhs, _applies(applies, lhs), _ratio(lhs - base, rhs - base),
                 jnp.asarray(slack))


def at_least(lhs, rhs, slack, applies=True, base=0.0) -> Verdict:
  """lhs >= rhs; margin = lhs − rhs; ratio = (rhs − base)/(lhs − base).

  Examples:
    >>> v = at_least(3.0, 1.0, 0.0)
    >>> float(v.margin), float(v.ratio)  # lhs − rhs; rhs / lhs
    (2.0, 0.3333333333333333)
  """
  return Verdict(lhs, rhs, lhs - rhs, _applies(applies, lhs), _ratio(rhs - base, lhs - base),
                 jnp.asarray(slack))


def positive(value, slack, applies=True) -> Verdict:
  """value > 0 (a strict statement); margin = value.

  Examples:
    >>> v = positive(0.0, 0.0)  # exactly 0 with no rounding: a strict claim fails
    >>> bool(fails(v.margin, v.slack, strict=True))
    True
  """
  return Verdict(value, jnp.zeros_like(value), value, _applies(applies, value), _nan_like(value),
                 jnp.asarray(slack))


def fails(margin, slack, strict: bool = False):
  """Elementwise: is the margin a failure beyond rounding? (< −slack; strict: ≤ −slack).

  NaN margins are failures too (a number was expected).

  Examples:
    >>> import numpy as np
    >>> fails(np.array([-1e-17, -1e-3, 0.0, np.nan]), np.array([1e-16, 1e-16, 0.0, 1.0]), True)
    array([False,  True,  True,  True])
  """
  bad = (margin <= -slack) if strict else (margin < -slack)
  return bad | (margin != margin)


def holds(margin, slack, strict: bool = False):
  """Elementwise: not :func:`fails`.

  Examples:
    >>> import numpy as np
    >>> holds(np.array([-1e-17, -1e-3]), np.array([1e-16, 1e-16])).tolist()  # rounding, a failure
    [True, False]
  """
  return ~fails(margin, slack, strict)

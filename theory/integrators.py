r"""Adaptive ODE solvers in one ``lax.while_loop`` each: explicit Dormand–Prince 5(4), Rodas5P.

Both integrate ẏ = f(y, args) (autonomous; any pytree y) from t0 and save y at the times ``ts``
by stepping onto each of them (no interpolation), with the same step-size control:

- error norm ‖e‖ = sqrt(Σ_i (e_i / (atol + rtol·max(|y0_i|, |y1_i|)))² / n) (the RMS norm of
  Hairer–Nørsett–Wanner and scipy), a step is accepted when ‖e‖ ≤ 1;
- PI control (Hairer's DOPRI5): h ← h / clip(‖e‖^0.17 ‖e_prev‖^−0.04 / 0.9, 0.1, 5), no growth
  after a rejection; a non-finite error estimate counts as a rejection;
- a solve stops, with ``ok`` False, when it runs out of ``max_steps`` (accepted + rejected
  steps), when the step underflows (t + h rounds to t), or when the start is not finite.
  Saves it did not reach are NaN: a failed solve never looks like a result.

:func:`dopri5` is explicit: its steps are limited by stability to h ≲ 3.3 / ρ(∂f/∂y), so it is for
non-stiff problems. :func:`rodas5p` is linearly implicit (Rosenbrock, L-stable, order 5 with an
embedded order-4 estimate): each stage solves (I − hγ J) x = v with the Jacobian J at the step's
start, through a :class:`Linearisation` the caller provides (the tabular logit flows of
theory/logit_field.py solve it per prompt in O(|Y|) with the Woodbury identity;
:func:`dense_linearisation` is the generic O(n³) one). It takes large steps where the explicit
solver is held back by stability.

References:
  Dormand, Prince, "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6 (1980);
  Hairer, Nørsett, Wanner, "Solving Ordinary Differential Equations I" (2nd ed., 1993), II.4;
  Hairer, Wanner, "Solving Ordinary Differential Equations II" (2nd ed., 1996), IV.7;
  Steinebach, "Construction of Rosenbrock–Wanner method Rodas5P and numerical benchmarks within
  the Julia differential equations package", BIT Numer. Math. 63 (2023).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["Solution", "Linearisation", "dopri5", "rodas5p", "dense_linearisation"]

# Dormand–Prince 5(4): stage coefficients, 5th-order weights (= last stage row, FSAL) and the
# difference between the 5th- and 4th-order weights (the error estimate).
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

# Rodas5P (Steinebach 2023) in the transformed form of Hairer–Wanner IV.7 (W = I/(hγ) − J):
#   W U_i = f(Y_i) + Σ_{j<i} (C_ij / h) U_j,  Y_i = y + Σ_{j<i} A_ij U_j (i ≤ 6),
#   Y_7 = Y_6 + U_6, Y_8 = Y_7 + U_7, y_new = Y_8 + U_8, error estimate U_8.
_RODAS_GAMMA = 0.21193756319429014
_RODAS_A = (
    (),
    (3.0,),
    (2.849394379747939, 0.45842242204463923),
    (-6.954028509809101, 2.489845061869568, -10.358996098473584),
    (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
     0.030198172008377946),
)
_RODAS_C = (
    (),
    (-14.155112264123755,),
    (-17.97296035885952, -2.859693295451294),
    (147.12150275711716, -1.41221402718213, 71.68940251302358),
    (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
    (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
     -0.6610691825249471),
    (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
     -19.097331116725623, -28.087943162872662),
    (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
     -40.06618937091002, -54.66780262877968, -9.48861652309627),
)

# PI step-size control (Hairer's DOPRI5 defaults).
_SAFETY, _EXPO, _BETA = 0.9, 0.17, 0.04
_MIN_FACTOR, _MAX_FACTOR = 0.2, 10.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution:
  """The result of an adaptive solve (leading batch axes under vmap).

  Attributes:
    ys: y at the save times (pytree, leading [T] axis); NaN at saves the solve did not reach.
    ok: [] bool, every save time was reached.
    t: [] the time the solve reached.
    accepted, rejected: [] int32 step counts.
  """

  ys: Any
  ok: jax.Array
  t: jax.Array
  accepted: jax.Array
  rejected: jax.Array


class Linearisation(NamedTuple):
  """What :func:`rodas5p` needs beyond the field.

  Attributes:
    linearise: (y, args) -> (f(y), jac, hg_max): the field, a representation of the Jacobian
      J = ∂f/∂y at y, and the largest hγ for which ``solve`` is well posed (jnp.inf if any).
    solve: (jac, hg, v) -> x solving (I − hg·J) x = v (hg = hγ > 0; v and x like y).
  """

  linearise: Callable
  solve: Callable


def _lincomb(y, h, coeffs, ks):
  """y + h Σ_j c_j k_j over a pytree (zero coefficients skipped)."""
  terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]
  return jax.tree.map(lambda y_, *k_: y_ + h * sum(c * kk for (c, _), kk in zip(terms, k_)),
                      y, *[k for _, k in terms])


def _combine(coeffs, ks):
  """Σ_j c_j k_j over a pytree."""
  terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]
  return jax.tree.map(lambda *k_: sum(c * kk for (c, _), kk in zip(terms, k_)),
                      *[k for _, k in terms])


def _error_norm(err, m0, m1, rtol, atol, n):
  """RMS of err / (atol + rtol max(m0, m1)) over n entries (m0, m1: magnitudes of the states)."""
  def leaf(e, a, b):
    scale = atol + rtol * jnp.maximum(a, b)
    return jnp.sum(jnp.square(e / scale))
  total = sum(jax.tree.leaves(jax.tree.map(leaf, err, m0, m1)))
  return jnp.sqrt(total / n)


def _abs_pair(y0, y1):
  return jax.tree.map(jnp.abs, y0), jax.tree.map(jnp.abs, y1)


def _all_finite(y):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(y)]))


def _initial_step(field, args, y0, f0, span, rtol, atol, n, order, magnitudes):
  """Hairer's starting step (one extra evaluation), capped by the span."""
  m0, _ = magnitudes(y0, y0)
  d0 = _error_norm(m0, m0, m0, rtol, atol, n)
  d1 = _error_norm(f0, m0, m0, rtol, atol, n)
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-300))
  h0 = jnp.minimum(h0, span)
  y1 = jax.tree.map(lambda a, b: a + h0 * b, y0, f0)
  f1 = field(y1, args)
  d2 = _error_norm(jax.tree.map(jnp.subtract, f1, f0), m0, m0, rtol, atol, n) / h0
  dmax = jnp.maximum(d1, d2)
  h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / dmax) ** (1.0 / (order + 1)))
  h = jnp.minimum(100 * h0, h1)
  return jnp.where(jnp.isfinite(h) & (h > 0), jnp.minimum(h, span), span * 1e-6)


def _adaptive_loop(step, y0, aux0, h0, save_times, max_steps, normalise, enabled):
  """The shared adaptive loop: steps onto every save time, PI control, failure detection.

  ``step(y, aux, h) -> (y1, aux1, err_norm, h_used)`` (h_used <= h; aux is carried state such as
  the FSAL derivative). Times are τ = |t − t0| (increasing, >= 0).
  """
  n_save = save_times.shape[0]
  dtype = save_times.dtype
  nan_ys = jax.tree.map(lambda a: jnp.full((n_save,) + a.shape, jnp.nan, a.dtype), y0)
  start_ok = enabled & _all_finite(y0) & jnp.isfinite(h0)

  def cond(s):
    t, y, aux, h, k, ys, acc, rej, err_prev, failed = s
    return start_ok & (k < n_save) & ~failed & (acc + rej < max_steps)

  def body(s):
    t, y, aux, h_prop, k, ys, acc, rej, err_prev, failed = s
    target = save_times[k]
    dist = target - t  # >= 0; a save at the current time takes a null step (h = 0: y1 = y)
    h = jnp.minimum(h_prop, dist)
    y1, aux1, err, h_used = step(y, aux, h)
    err = jnp.where(jnp.isfinite(err), err, jnp.inf)
    accept = err <= 1.0
    hit = accept & (h_used >= dist)
    # PI controller: h_next = h_used / fac.
    fac11 = jnp.maximum(err, 1e-10) ** _EXPO
    fac_acc = jnp.clip(fac11 / err_prev ** _BETA / _SAFETY, 1.0 / _MAX_FACTOR, 1.0 / _MIN_FACTOR)
    fac_rej = jnp.minimum(1.0 / _MIN_FACTOR, fac11 / _SAFETY)
    h_next = h_used / jnp.where(accept, fac_acc, fac_rej)
    # A step cut short (to land on a save time, or by the solver) does not shrink the next one.
    h_next = jnp.where(accept & (h_used < h_prop), jnp.maximum(h_next, h_prop), h_next)
    y_next = jax.tree.map(lambda a, b: jnp.where(accept, b, a), y, normalise(y1))
    aux_next = jax.tree.map(lambda a, b: jnp.where(accept, b, a), aux, aux1)
    ys = jax.tree.map(lambda buf, v: buf.at[k].set(jnp.where(hit, v, buf[k])), ys, y_next)
    underflow = t + h_next <= t  # the next step would not move the time
    failed = failed | (~accept & underflow) | ~(h_next > 0) | ~jnp.isfinite(h_next)
    t_next = jnp.where(hit, target, jnp.where(accept, t + h_used, t))
    return (t_next, y_next, aux_next, h_next, k + hit.astype(k.dtype), ys,
            acc + accept.astype(acc.dtype), rej + (~accept).astype(rej.dtype),
            jnp.where(accept, jnp.maximum(err, 1e-4), err_prev), failed)

  init = (jnp.zeros((), dtype), y0, aux0, jnp.asarray(h0, dtype), jnp.zeros((), jnp.int32), nan_ys,
          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.asarray(1e-4, dtype),
          jnp.asarray(False))
  t, _, _, _, k, ys, acc, rej, _, _ = jax.lax.while_loop(cond, body, init)
  return t, ys, k == n_save, acc, rej


def _save_times(ts, y0):
  """ts as an array of the state's float dtype."""
  dtype = jax.tree.leaves(y0)[0].dtype
  return jnp.asarray(ts, dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float64)


def _monotone(taus):
  """[] bool: τ >= 0 and non-decreasing (else a save would be taken at the wrong time)."""
  return jnp.all(taus >= 0) & jnp.all(taus[1:] >= taus[:-1])


def _directed(field, ts, t0):
  """Integration direction, save times τ = |ts − t0| and the field in τ."""
  direction = jnp.where(ts[-1] >= t0, 1.0, -1.0).astype(ts.dtype)
  taus = direction * (ts - t0)
  signed = lambda y, args: jax.tree.map(lambda v: direction * v, field(y, args))
  return direction, taus, signed


def _rodas_tables(dtype):
  """[9, 8] stage-point and [8, 8] coupling coefficients of Rodas5P (row 8: the new y)."""
  points = [[0.0] * 8 for _ in range(9)]
  couplings = [[0.0] * 8 for _ in range(8)]
  for i in range(1, 6):
    points[i][:i] = _RODAS_A[i]
  for i in range(6, 9):  # Y_6 = Y_5 + U_5, Y_7 = Y_6 + U_6, y_new = Y_7 + U_7
    points[i] = list(points[i - 1])
    points[i][i - 1] += 1.0
  for i in range(1, 8):
    couplings[i][:i] = _RODAS_C[i]
  return jnp.asarray(points, dtype), jnp.asarray(couplings, dtype)


def dopri5(field: Callable, y0, ts: jax.Array, args=None, *, t0=0.0, rtol: float = 1e-8,
           atol: float = 1e-10, max_steps: int = 1 << 16, n=None, normalise=None,
           magnitudes=None, enabled=True) -> Solution:
  r"""Explicit Dormand–Prince 5(4) with PI control, saving y at ``ts`` (one while loop).

  Args:
    field: (y, args) -> ẏ (pytree like y).
    y0: initial state (pytree).
    ts: [T] save times, monotone away from t0 (decreasing below t0 integrates backwards).
    args: passed to ``field``.
    t0: start time.
    rtol, atol: tolerances of the RMS error norm (module docstring).
    max_steps: step budget (accepted + rejected).
    n: number of entries the norm averages over (default: all); masked entries with zero error
      can be left out this way.
    normalise: y -> y applied after every accepted step (a gauge fix that ``field`` does not
      see, e.g. shifting softmax logits by a constant); default identity.
    magnitudes: (y0, y1) -> (|y0|, |y1|) as the tolerance sees them at a step's start and end
      (default elementwise abs); with ``normalise``, the magnitudes in the problem's own gauge.
    enabled: [] bool; False returns at once (``ok`` False), for batched method selection.

  Returns:
    :class:`Solution` with ``ys`` [T, ...].

  Examples:
    >>> import jax.numpy as jnp
    >>> sol = dopri5(lambda y, a: -y, jnp.ones(1), jnp.array([1.0, 2.0]))
    >>> [round(float(v), 8) for v in sol.ys[:, 0]], bool(sol.ok)  # e^{-1}, e^{-2}
    ([0.36787944, 0.13533528], True)
  """
  normalise = normalise or (lambda y: y)
  magnitudes = magnitudes or _abs_pair
  n = sum(a.size for a in jax.tree.leaves(y0)) if n is None else n
  direction, taus, signed = _directed(field, _save_times(ts, y0), t0)
  enabled = jnp.asarray(enabled) & _monotone(taus)
  span = jnp.maximum(jnp.max(taus), jnp.finfo(taus.dtype).tiny)
  f0 = signed(y0, args)
  h0 = _initial_step(signed, args, y0, f0, span, rtol, atol, n, 4, magnitudes)

  def step(y, f, h):
    ks = [f]
    yi = y
    for i in range(1, 7):
      yi = _lincomb(y, h, _DP_A[i], ks)
      ks.append(signed(yi, args))
    err = jax.tree.map(lambda e: h * e, _combine(_DP_E, ks))
    return yi, ks[-1], _error_norm(err, *magnitudes(y, yi), rtol, atol, n), h

  t, ys, ok, acc, rej = _adaptive_loop(step, y0, f0, h0, taus, max_steps, normalise,
                                       enabled)
  return Solution(ys=ys, ok=ok, t=jnp.asarray(t0, taus.dtype) + direction * t, accepted=acc,
                  rejected=rej)


def rodas5p(field: Callable, linearisation: Linearisation, y0, ts: jax.Array, args=None, *,
            t0=0.0, rtol: float = 1e-8, atol: float = 1e-10, max_steps: int = 1 << 16, n=None,
            normalise=None, magnitudes=None, enabled=True) -> Solution:
  r"""Linearly implicit Rodas5P (L-stable, order 5(4)), saving y at ``ts`` (one while loop).

  Each step evaluates f and the Jacobian J at the step's start, then solves eight linear
  systems (I − hγ J) x = v (γ = 0.2119…) with ``linearisation.solve``; the step is capped so
  that hγ stays below the linearisation's ``hg_max``.

  Args:
    field: (y, args) -> ẏ; used at the stage points.
    linearisation: :class:`Linearisation` of the same field (e.g. :func:`dense_linearisation`).
    y0, ts, args, t0, rtol, atol, max_steps, n, normalise, magnitudes, enabled: as
      :func:`dopri5`, except
      that the integration runs forwards only: ``ts`` must be >= t0 (else ``ok`` is False; run
      the negated field to go backwards).

  Returns:
    :class:`Solution`.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = lambda y, a: jnp.array([-1e6 * (y[0] - jnp.cos(y[1])), 1.0])  # stiff: λ = −1e6
    >>> sol = rodas5p(f, dense_linearisation(f), jnp.array([0.0, 0.0]), jnp.array([1.0]))
    >>> round(float(sol.ys[0, 0]), 6), bool(sol.ok), int(sol.accepted) < 100  # y₀ ≈ cos(t)
    (0.540303, True, True)
  """
  normalise = normalise or (lambda y: y)
  magnitudes = magnitudes or _abs_pair
  n = sum(a.size for a in jax.tree.leaves(y0)) if n is None else n
  taus = _save_times(ts, y0) - t0
  enabled = jnp.asarray(enabled) & _monotone(taus)
  span = jnp.maximum(jnp.max(taus), jnp.finfo(taus.dtype).tiny)

  linearise = lambda y: linearisation.linearise(y, args)
  f0, _, _ = linearise(y0)
  h0 = _initial_step(field, args, y0, f0, span, rtol, atol, n, 4, magnitudes)
  g = _RODAS_GAMMA

  points, couplings = _rodas_tables(taus.dtype)

  def step(y, _, h):
    f, jac, hg_max = linearise(y)
    # A non-positive hg_max (a solve that cannot be posed) yields NaN below: a rejection.
    h = jnp.minimum(h, hg_max / g)
    hg = h * g
    solve = lambda v: linearisation.solve(jac, hg, v)
    u0 = solve(jax.tree.map(lambda a: hg * a, f))
    us = jax.tree.map(lambda a: jnp.zeros((8,) + a.shape, a.dtype).at[0].set(a), u0)

    def stage(i, us):
      # Stages in a loop (one copy of the field and the solve to compile, not seven).
      yi = jax.tree.map(lambda a, u: a + jnp.tensordot(points[i], u, axes=1), y, us)
      rhs = jax.tree.map(lambda fa, u: hg * fa + g * jnp.tensordot(couplings[i], u, axes=1),
                         field(yi, args), us)
      return jax.tree.map(lambda u, x: u.at[i].set(x), us, solve(rhs))

    us = jax.lax.fori_loop(1, 8, stage, us)
    y1 = jax.tree.map(lambda a, u: a + jnp.tensordot(points[8], u, axes=1), y, us)
    err = jax.tree.map(lambda u: u[7], us)
    return y1, (), _error_norm(err, *magnitudes(y, y1), rtol, atol, n), h

  t, ys, ok, acc, rej = _adaptive_loop(step, y0, (), h0, taus, max_steps, normalise,
                                       enabled)
  return Solution(ys=ys, ok=ok, t=jnp.asarray(t0, taus.dtype) + t, accepted=acc, rejected=rej)


def dense_linearisation(field: Callable) -> Linearisation:
  r"""The generic :class:`Linearisation`: J by forward-mode autodiff, dense LU solves (O(n³)).

  For small states only; structured fields should provide their own (see
  theory/logit_field.py, which solves the tabular flows' systems in O(|X||Y|)).

  Examples:
    >>> import jax.numpy as jnp
    >>> lin = dense_linearisation(lambda y, a: -2.0 * y)
    >>> f, jac, hg_max = lin.linearise(jnp.ones(2), None)
    >>> [float(v) for v in lin.solve(jac, 0.5, jnp.ones(2))]  # (I + 0.5·2 I)⁻¹ 1
    [0.5, 0.5]
  """

  def linearise(y, args):
    flat, unravel = ravel_pytree(y)
    flat_field = lambda v: ravel_pytree(field(unravel(v), args))[0]
    f = field(y, args)
    return f, jax.jacfwd(flat_field)(flat), jnp.asarray(jnp.inf, flat.dtype)

  def solve(jac, hg, v):
    flat, unravel = ravel_pytree(v)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
    return unravel(jnp.linalg.solve(eye - hg * jac, flat))

  return Linearisation(linearise, solve)

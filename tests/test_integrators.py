"""The adaptive solvers of theory/integrators.py on problems with known solutions.

References: closed-form solutions (a nonlinear autonomous system; the stiff Prothero–Robinson
problem, whose solution is cos t for every stiffness λ) and scipy's Radau.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from conftest import TOL_NUMERICAL, assert_close

from nondecoupling.theory.flows import integrate
from nondecoupling.theory.integrators import dense_linearisation, dopri5, rodas5p

NUM_RTOL, NUM_ATOL = TOL_NUMERICAL


def riccati(y, _):
  """y₀' = −y₀², y₁' = y₀ y₁: y₀ = 1/(1 + t), y₁ = 1 + t from (1, 1)."""
  return jnp.stack([-y[0] ** 2, y[0] * y[1]])


def riccati_exact(t):
  return np.stack([1.0 / (1.0 + t), 1.0 + t], axis=-1)


def prothero_robinson(lam):
  """y' = −λ (y − cos s) − sin s, s' = 1: y = cos s from y(0) = 1, stiff for large λ."""
  def field(y, _):
    return jnp.stack([-lam * (y[0] - jnp.cos(y[1])) - jnp.sin(y[1]), jnp.ones_like(y[1])])
  return field


@pytest.mark.parametrize("solver", ["dopri5", "rodas5p"])
def test_solvers_reach_the_exact_solution_and_scale_with_the_tolerance(solver):
  ts = jnp.array([0.5, 2.0, 10.0])
  y0 = jnp.array([1.0, 1.0])

  def run(rtol):
    if solver == "dopri5":
      return dopri5(riccati, y0, ts, rtol=rtol, atol=rtol * 1e-2)
    return rodas5p(riccati, dense_linearisation(riccati), y0, ts, rtol=rtol, atol=rtol * 1e-2)

  loose, tight = run(1e-5), run(1e-10)
  assert bool(loose.ok) and bool(tight.ok) and float(tight.t) == 10.0
  exact = riccati_exact(np.asarray(ts))
  assert_close(tight.ys, exact, rtol=NUM_RTOL * 1e-2, atol=NUM_ATOL * 1e-2)
  err_loose = np.max(np.abs(np.asarray(loose.ys) - exact) / exact)
  err_tight = np.max(np.abs(np.asarray(tight.ys) - exact) / exact)
  assert err_tight < err_loose * 1e-3  # error proportional to the tolerance
  # An order-4 error estimate: steps grow like tol^(-1/5), a factor 10 over 5 decades (an
  # order-2 scheme would need 10^(5/3) ≈ 46 times more).
  steps = lambda sol: int(sol.accepted) + int(sol.rejected)
  assert 4 < steps(tight) / steps(loose) < 20


def test_rodas5p_is_stable_where_dopri5_is_not():
  field = prothero_robinson(1e6)
  y0 = jnp.array([1.0, 0.0])
  ts = jnp.array([1.0, 10.0])
  sol = rodas5p(field, dense_linearisation(field), y0, ts, rtol=1e-9, atol=1e-12)
  assert bool(sol.ok) and int(sol.accepted) < 400
  assert_close(sol.ys[:, 0], np.cos(np.asarray(ts)), rtol=NUM_RTOL, atol=NUM_ATOL)
  ref = scipy.integrate.solve_ivp(lambda t, y: np.asarray(field(jnp.asarray(y), None)), (0, 10.0),
                                  np.asarray(y0), method="Radau", t_eval=np.asarray(ts),
                                  rtol=1e-11, atol=1e-13)
  assert_close(sol.ys, ref.y.T, rtol=NUM_RTOL, atol=NUM_ATOL)
  # The explicit solver needs ~λ · T / 3.3 steps for stability: its budget runs out, and what
  # it did not reach is NaN.
  explicit = dopri5(field, y0, ts, rtol=1e-9, atol=1e-12, max_steps=2000)
  assert not bool(explicit.ok) and int(explicit.accepted) + int(explicit.rejected) == 2000
  assert np.all(np.isnan(np.asarray(explicit.ys[-1])))


def test_integrate_runs_backwards_on_pytrees_and_refuses_unordered_times():
  field = lambda y, k: (k * y[0], -2.0 * y[1])  # y = (e^{kt}, e^{−2t})
  y0 = (jnp.ones(2), jnp.ones(()))
  ys, ok = integrate(field, y0, jnp.array([-1.0, -2.0]), -1.0)  # backwards from 0
  assert bool(ok)
  assert_close(ys[0][:, 0], np.exp([1.0, 2.0]), rtol=NUM_RTOL, atol=NUM_ATOL)
  assert_close(ys[1], np.exp([2.0, 4.0]), rtol=NUM_RTOL, atol=NUM_ATOL)
  # Save times out of order would be saved at the wrong time: the solve refuses (ok False).
  ys, ok = integrate(field, y0, jnp.array([2.0, 1.0]), -1.0)
  assert not bool(ok) and np.all(np.isnan(np.asarray(ys[0])))
  # Rodas5P integrates forwards only.
  lin = dense_linearisation(field)
  ys, ok = integrate(field, y0, jnp.array([-1.0]), -1.0, linearisation=lin)
  assert not bool(ok)
  ys, ok = integrate(field, y0, jnp.array([1.0]), -1.0, linearisation=lin)
  assert bool(ok)
  assert_close(ys[1], np.exp([-2.0]), rtol=NUM_RTOL, atol=NUM_ATOL)


def test_a_non_finite_start_fails_at_once():
  sol = dopri5(riccati, jnp.array([jnp.nan, 1.0]), jnp.array([1.0]))
  assert not bool(sol.ok) and int(sol.accepted) + int(sol.rejected) == 0

"""Gradient flows, pipelines and optax steps (theory/flows.py, logit_flow.py, logit_field.py).

Independent references: scipy's Radau (an implicit Runge–Kutta method, given the exact Jacobian
written here in NumPy) and DOP853 at tight tolerance, the exact end points (long RL flow → Gibbs
tilt π*_β, long SFT flow → d), mpmath at 50 digits for the field at |r| = 1e12, central finite
differences for the Jacobian, numpy.linalg.solve for the per-prompt Woodbury solve. Every flow
comparison runs our solvers at rtol 1e-10 (one compile per solver) and compares probabilities
with the numerical-integration tolerance of tests/conftest.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.integrate
from conftest import TOL_NUMERICAL, assert_close
from hypothesis import given, strategies as st

from nondecoupling.theory import flows, objectives as obj, optimizer_steps
from nondecoupling.theory.instance import make_instance, pad_instance, stack
from nondecoupling.theory.logit_field import logit_system
from nondecoupling.theory.logit_flow import _host_stiffness_rates
from nondecoupling.verify.cli.dynamics import flow_points
from nondecoupling.verify.compare import flow_row

RTOL, ATOL = 1e-10, 1e-12  # our solvers in every accuracy test
NUM_RTOL, NUM_ATOL = TOL_NUMERICAL


def _instance(seed=0, nx=3, ny=4, beta=0.8, same_ref=False, low=0.2, reward_scale=1.0):
  rng = np.random.default_rng(seed)
  d = rng.uniform(low, 1.0, (nx, ny))
  d /= d.sum(1, keepdims=True)
  ref = rng.uniform(low, 1.0, (nx, ny))
  ref /= ref.sum(1, keepdims=True)
  r = reward_scale * rng.uniform(-1, 1, (nx, ny))
  w = rng.uniform(0.5, 1.0, nx)
  return make_instance(w / w.sum(), d, r, beta, reference=d if same_ref else ref)


def _pi(inst, theta):
  return np.exp(np.asarray(obj.policy_log_probs(inst, theta)))


# ----------------------------------------------------------------------------- NumPy reference

def _arrays(inst):
  return tuple(np.asarray(a, np.float64) for a in (inst.prompt_weights, inst.data,
                                                   inst.reference, inst.reward, inst.beta))


def _numpy_probs(theta):
  z = theta - theta.max(axis=-1, keepdims=True)
  p = np.exp(z)
  return p / p.sum(axis=-1, keepdims=True), z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_field(inst, a, b):
  """θ̇ = w[b π(h − ⟨π,h⟩) − a(π − d)], h = r − β log(π/ρ), on a full-support instance."""
  w, d, ref, r, beta = _arrays(inst)

  def rhs(t, y):
    p, log_p = _numpy_probs(y.reshape(d.shape))
    h = r - beta * (log_p - np.log(ref))
    return (w[:, None] * (b * p * (h - (p * h).sum(1, keepdims=True)) - a * (p - d))).ravel()

  return rhs


def numpy_jacobian(inst, a, b, eps=1e-5):
  """The Jacobian of :func:`numpy_field` by central differences (per prompt block)."""
  rhs = numpy_field(inst, a, b)

  def jac(t, y):
    n = y.size
    out = np.zeros((n, n))
    for i in range(n):
      step = np.zeros(n)
      step[i] = eps
      out[:, i] = (rhs(t, y + step) - rhs(t, y - step)) / (2 * eps)
    return out

  return jac


def radau(inst, a, b, ts, theta0=None):
  """scipy Radau at rtol 1e-12 with the finite-difference Jacobian; returns [T, X, Y] logits."""
  y0 = np.log(np.asarray(inst.reference)).ravel() if theta0 is None else np.ravel(theta0)
  sol = scipy.integrate.solve_ivp(numpy_field(inst, a, b), (0.0, ts[-1]), y0, method="Radau",
                                  t_eval=ts, rtol=1e-12, atol=1e-12,
                                  jac=numpy_jacobian(inst, a, b))
  assert sol.success, sol.message
  return sol.y.T.reshape((len(ts),) + inst.shape)


# ----------------------------------------------------------------------------- the field

def _mp_field(inst, theta, a, b):
  """f(θ) at 50 digits, straight from THEORY.md B5 (mpmath)."""
  mpmath.mp.dps = 50
  w, d, ref, r, beta = _arrays(inst)
  out = np.zeros(d.shape)
  for x in range(d.shape[0]):
    th = [mpmath.mpf(float(v)) for v in theta[x]]
    z = mpmath.fsum(mpmath.exp(v) for v in th)
    p = [mpmath.exp(v) / z for v in th]
    h = [mpmath.mpf(float(r[x, y])) - mpmath.mpf(float(beta)) * (mpmath.log(p[y])
                                                                 - mpmath.log(float(ref[x, y])))
         for y in range(len(th))]
    mean = mpmath.fsum(pi * hi for pi, hi in zip(p, h))
    for y in range(len(th)):
      out[x, y] = float(w[x] * (b * p[y] * (h[y] - mean) - a * (p[y] - float(d[x, y]))))
  return out


@given(log_beta=st.floats(-6, 6), log_scale=st.floats(-6, 6), seed=st.integers(0, 2 ** 16),
       kind=st.sampled_from([(0.0, 1.0), (1.0, 0.0), (1.0, 0.7)]))
def test_field_matches_mpmath_over_the_domain(log_beta, log_scale, seed, kind):
  """The precise field (used where rewards or β are large) has full relative precision for
  β in [1e-6, 1e6] and |r|/β up to 1e6, entry by entry."""
  beta = 10.0 ** log_beta
  inst = _instance(seed, nx=2, ny=4, beta=beta, reward_scale=beta * 10.0 ** log_scale)
  a, b = kind
  system = logit_system(inst, a, b)
  theta = system.to_internal(jnp.asarray(np.random.default_rng(seed).normal(0, 3, (2, 4))))
  want = _mp_field(inst, np.asarray(theta), a, b)
  assert_close(system.precise_field(theta), want)


@pytest.mark.parametrize("beta,reward_scale,kind", [
    (0.7, 1.0, (0.0, 1.0)), (1e-6, 1.0, (1.0, 0.6)), (1e6, 1e6, (0.0, 1.0)), (1.0, 1.0, (1.0, 0.0))])
def test_jacobian_and_woodbury_solve_against_numpy(beta, reward_scale, kind):
  inst = _instance(5, beta=beta, reward_scale=reward_scale)
  a, b = kind
  system = logit_system(inst, a, b)
  rng = np.random.default_rng(1)
  theta = system.to_internal(jnp.asarray(rng.normal(0, 1, inst.shape)))
  f, jac, cap = system.linearise(theta)
  pi, c, kappa, w = (np.asarray(v) for v in jac)
  nx, ny = inst.shape
  dense = np.zeros((nx * ny, nx * ny))
  for x in range(nx):
    dense[x * ny:(x + 1) * ny, x * ny:(x + 1) * ny] = w[x, 0] * (
        np.diag(c[x]) - np.outer(c[x], pi[x]) - np.outer(pi[x], c[x]) - kappa * np.outer(pi[x],
                                                                                         pi[x]))
  # The closed-form Jacobian against central differences of the NumPy field, in units of its
  # largest entry (the differences resolve entries relative to that scale).
  fd = numpy_jacobian(inst, a, b)(0.0, np.asarray(theta).ravel())
  unit = np.abs(fd).max()
  assert_close(dense / unit, fd / unit, rtol=NUM_RTOL, atol=NUM_ATOL)
  # The Woodbury solve against a dense solve, for hγ from 1e-3 to 1e3 times the stiffness scale.
  v = rng.normal(0, 1, inst.shape)
  rate = float(flows.stiffness_rate(inst, a, b))
  for hg in (1e-3 / rate, 1.0 / rate, 1e3 / rate):
    hg = min(hg, float(cap))
    want = np.linalg.solve(np.eye(nx * ny) - hg * dense, v.ravel()).reshape(inst.shape)
    got = np.asarray(system.solve(jac, hg, jnp.asarray(v)))
    assert_close(got / np.abs(want).max(), want / np.abs(want).max())


# ----------------------------------------------------------------------------- flows over the domain

DOMAIN_CASES = [  # (β, reward scale, a, b): β from 1e-6 to 1e6, |r|/β up to 1e6
    (1e-6, 1.0, 0.0, 1.0),
    (1.0, 1.0, 1.0, 1.0),
    (1e6, 1.0, 0.0, 1.0),
    (1e6, 1e3, 1.0, 0.5),
    (1.0, 1e6, 0.0, 1.0),
]


@pytest.mark.parametrize("beta,reward_scale,a,b", DOMAIN_CASES)
def test_flow_matches_scipy_radau(beta, reward_scale, a, b):
  inst = _instance(21, nx=2, ny=3, beta=beta, reward_scale=reward_scale)
  u = float(flows.time_unit(inst))
  ts = np.array([0.5 * u, 5 * u])
  sol = flows.flow_solution(inst, jnp.asarray(ts), a, b, rtol=RTOL, atol=ATOL)
  assert bool(sol.ok)
  stiff = ts[-1] * float(flows.stiffness_rate(inst, a, b)) > flows.EXPLICIT_LIMIT
  assert bool(sol.stiff) == stiff
  want = radau(inst, a, b, ts)
  for k in range(len(ts)):
    p_want, _ = _numpy_probs(want[k])
    assert_close(_pi(inst, sol.thetas[k]), p_want, rtol=NUM_RTOL, atol=NUM_ATOL)
  # The logits themselves, in the ODE's own gauge (Σ_y θ_y conserved), where π is not tiny.
  big = _numpy_probs(want[-1])[0] > 1e-8
  assert_close(np.asarray(sol.thetas[-1])[big], want[-1][big], rtol=NUM_RTOL, atol=NUM_ATOL)


END_POINT_CASES = [(beta, ratio) for beta in (1e-6, 1.0, 1e6) for ratio in (1.0, 1e6)]


@pytest.mark.parametrize("beta,ratio", END_POINT_CASES)
def test_long_rl_flow_reaches_the_gibbs_tilt(beta, ratio):
  """θ̇ = ∇J_β from ρ ends at π*_β = ρ e^{r/β}/Z over the whole domain (|r|/β up to 1e6)."""
  inst = _instance(31, beta=beta, reward_scale=beta * ratio)
  want = np.exp(np.asarray(obj.gibbs_tilt(inst)))
  w = np.asarray(inst.prompt_weights)
  r = np.sort(np.asarray(inst.reward), axis=1)
  if ratio > 1:  # π on a loser y decays like 1 / (w (r_top − r_y) t): run until that is ~1e-9
    horizon = 1e9 / np.min(w * (r[:, -1] - r[:, -2]))
  else:  # exponential approach at rate ≥ w β min π*
    horizon = 60.0 / np.min(w * beta * want.min(axis=1))
  sol = flows.flow_solution(inst, jnp.array([1e-9 * horizon, horizon]), 0.0, 1.0, rtol=RTOL,
                            atol=ATOL)
  assert bool(sol.ok) and int(sol.accepted) < 20_000
  assert_close(_pi(inst, sol.thetas[-1]), want, rtol=NUM_RTOL, atol=NUM_ATOL)
  # Far from it at the first save: the check is not vacuous.
  assert np.max(np.abs(_pi(inst, sol.thetas[0]) - want)) > 1e-4


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.2), (1 - 2e-6, 1e-6, 1e-6)])
def test_long_sft_flow_reaches_the_data(weights):
  """θ̇ = −∇L ends at d, also with prompt weights 1e6 apart (stiff through the weights)."""
  inst = dataclasses.replace(_instance(32, ny=4), prompt_weights=jnp.asarray(weights))
  horizon = 60.0 / (min(weights) * np.asarray(inst.data).min())
  sol = flows.flow_solution(inst, jnp.array([1e-9 * horizon, horizon]), 1.0, 0.0, rtol=RTOL,
                            atol=ATOL)
  assert bool(sol.ok) and int(sol.accepted) < 20_000
  assert bool(sol.stiff) or max(weights) / min(weights) < 10
  assert_close(_pi(inst, sol.thetas[-1]), inst.data, rtol=NUM_RTOL, atol=NUM_ATOL)


def test_stiff_flow_needs_the_implicit_solver():
  """At β = 1e6 the explicit solver is held back by stability; Rodas5P is not."""
  inst = _instance(33, beta=1e6)
  ts = jnp.array([1.0, 5 * float(flows.time_unit(inst))])
  auto = flows.flow_solution(inst, ts, 0.0, 1.0, rtol=RTOL, atol=ATOL)
  assert bool(auto.ok) and bool(auto.stiff) and int(auto.accepted) < 300
  explicit = flows.flow_solution(inst, ts, 0.0, 1.0, rtol=RTOL, atol=ATOL, method="explicit",
                                 max_steps=3000)
  assert not bool(explicit.ok) and not bool(explicit.stiff)
  assert np.all(np.isnan(np.asarray(explicit.thetas[-1])))  # not reached: NaN, never zeros


def test_flow_matches_scipy_dop853_on_a_joint_field():
  inst = _instance(4, beta=0.5)
  lam = 0.7
  ts = np.array([1.0, 5.0, 20.0])
  th, ok = flows.flow(inst, jnp.asarray(ts), 1.0, lam, rtol=RTOL, atol=ATOL)
  sol = scipy.integrate.solve_ivp(numpy_field(inst, 1.0, lam), (0.0, ts[-1]),
                                  np.log(np.asarray(inst.reference)).ravel(), t_eval=ts,
                                  method="DOP853", rtol=1e-12, atol=1e-13)
  assert bool(ok) and sol.success
  assert_close(np.asarray(th).reshape(len(ts), -1), sol.y.T, rtol=NUM_RTOL, atol=NUM_ATOL)


def test_rl_flow_keeps_zero_reference_entries_at_zero():
  inst = _instance(2, beta=0.3)
  ref = np.asarray(inst.reference).copy()
  ref[0, 1] = 0.0
  ref /= ref.sum(1, keepdims=True)
  d = np.asarray(inst.data).copy()
  d[0, 1] = 0.0
  d /= d.sum(1, keepdims=True)
  inst = dataclasses.replace(inst, reference=jnp.asarray(ref), data=jnp.asarray(d))
  th, ok = flows.rl_flow(inst, jnp.array([10.0, 40000.0]), rtol=RTOL, atol=ATOL)
  pi = _pi(inst, th[-1])
  assert bool(ok) and pi[0, 1] == 0.0
  assert_close(pi, np.exp(obj.gibbs_tilt(inst)), rtol=NUM_RTOL, atol=NUM_ATOL)


# ----------------------------------------------------------------------------- failures

def test_a_solve_out_of_steps_is_reported_never_zeros():
  inst = _instance(40)
  sched = flows.sft_then_rl_schedule(30.0, 40.0)
  tr = flows.run_flow(inst, sched, n_save=2, max_steps=5)
  assert not bool(tr.ok) and not bool(tr.phase_ok[0])
  assert int(tr.steps[0]) + int(tr.rejected[0]) == 5 and float(tr.reached[0]) < 30.0
  assert np.all(np.isnan(np.asarray(tr.reward[1:])))  # every point after the start
  row = flow_row(inst, "sft_then_rl", tr, sched, 0.0, max_steps=5)
  assert row["status"].startswith("error: the flow did not reach the end of phase 0")
  assert "budget 5" in row["status"]
  assert all(row[k] is None for k in ("sft_loss", "reward", "regularized_reward", "regret"))
  ok_row = flow_row(inst, "sft_then_rl", flows.run_flow(inst, sched, n_save=2), sched, 0.0)
  assert ok_row["status"] == "ok" and ok_row["solver"] == "explicit" and ok_row["steps"] > 0


# ----------------------------------------------------------------------------- pipelines

def test_objectives_monotone_along_their_flows():
  inst = _instance(5)
  tr = flows.run_flow(inst, flows.rl_only_schedule(100.0), n_save=16)
  assert np.all(np.diff(np.asarray(tr.regularized_reward)) >= -1e-12)
  tr = flows.run_flow(inst, flows.sft_only_schedule(100.0), n_save=16)
  assert np.all(np.diff(np.asarray(tr.sft_loss)) <= 1e-12)
  assert_close(tr.kl_data, tr.sft_loss - obj.sft_optimum_loss(inst), atol=1e-12)


def test_sft_then_rl_resets_reference_to_sft_end_policy():
  inst = _instance(6)
  sched = flows.sft_then_rl_schedule(30.0, 4000.0)
  tr = flows.run_flow(inst, sched, n_save=4)
  assert tr.times.shape == (9,) and bool(tr.ok)
  assert_close(tr.times, [0, 7.5, 15, 22.5, 30, 1030, 2030, 3030, 4030], atol=1e-9)
  np.testing.assert_array_equal(tr.phase, [0, 0, 0, 0, 0, 1, 1, 1, 1])
  # End of SFT phase (index 4) is the RL reference; RL converges to its Gibbs tilt.
  sft_end = jnp.exp(tr.log_pi[4])
  want = obj.gibbs_tilt(dataclasses.replace(inst, reference=sft_end))
  assert_close(jnp.exp(tr.log_pi[-1]), jnp.exp(want), rtol=NUM_RTOL, atol=NUM_ATOL)
  # Not the tilt of the base reference (the reset matters here).
  assert np.max(np.abs(np.exp(tr.log_pi[-1]) - np.exp(obj.gibbs_tilt(inst)))) > 1e-3


def test_pipeline_at_large_beta_matches_scipy_radau():
  """sft_then_rl at β = 1e6 (the RL phase is stiff) against Radau run phase by phase; the
  compare row reports the same numbers."""
  inst = make_instance([0.25, 0.75], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
                       [[1.0, 0.0, -1.0], [0.5, -0.5, 0.2]], 1e6,
                       reference=[[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
  sched = flows.pipeline_schedule("sft_then_rl", inst)
  tr = flows.run_flow(inst, sched, n_save=2, rtol=RTOL, atol=ATOL)
  assert bool(tr.ok) and np.asarray(tr.stiff).tolist() == [False, True]
  t_sft, t_rl = np.asarray(sched.duration)
  sft_end = radau(inst, 1.0, 0.0, np.array([t_sft]))[-1]
  p_sft, _ = _numpy_probs(sft_end)
  rl_end = radau(dataclasses.replace(inst, reference=jnp.asarray(p_sft)), 0.0, 1.0,
                 np.array([t_rl]), theta0=np.log(p_sft))[-1]
  p_want, _ = _numpy_probs(rl_end)
  assert_close(np.exp(np.asarray(tr.final_log_pi)), p_want, rtol=NUM_RTOL, atol=NUM_ATOL)
  row = flow_row(inst, "sft_then_rl", tr, sched, 0.0)
  assert row["status"] == "ok" and row["solver"] == "explicit+implicit"
  r = np.asarray(inst.reward)
  w = np.asarray(inst.prompt_weights)
  assert row["reward"] == pytest.approx(float(np.sum(w[:, None] * p_want * r)), abs=NUM_ATOL)


def test_rl_then_sft_and_joint_end_points():
  inst = _instance(7)
  tr = flows.run_flow(inst, flows.rl_then_sft_schedule(4000.0, 30.0), n_save=2)
  assert_close(jnp.exp(tr.log_pi[2]), jnp.exp(obj.gibbs_tilt(inst)), rtol=NUM_RTOL, atol=NUM_ATOL)
  # Joint flow's end point is stationary for L − λJ_β: the field vanishes there.
  tr = flows.run_flow(inst, flows.joint_schedule(5000.0, 2.0), n_save=2)
  theta = obj.logits_of(inst, tr.final_log_pi)
  field = flows.vector_field(inst, theta, 1.0, 2.0)
  assert float(jnp.max(jnp.abs(field))) < 1e-9


def test_alternating_schedule_phases():
  sched = flows.alternating_schedule(2.0, 7.0)
  np.testing.assert_allclose(sched.duration, [2, 2, 2, 1])
  np.testing.assert_allclose(sched.sft_weight, [1, 0, 1, 0])
  np.testing.assert_allclose(sched.rl_weight, [0, 1, 0, 1])
  with pytest.raises(ValueError):
    flows.alternating_schedule(0.0, 1.0)
  with pytest.raises(ValueError):
    flows.pipeline_schedule("nope", _instance())
  with pytest.raises(ValueError, match="method"):
    flows.flow(_instance(), jnp.array([1.0]), 0.0, 1.0, method="euler")


def test_vmap_over_padded_batch_matches_single_runs():
  """One stiff (β = 1e6) and one non-stiff instance in one vmapped batch: each picks its own
  solver in the graph and matches its own unbatched run."""
  insts = [_instance(10, nx=2, ny=3, beta=0.5), _instance(11, nx=3, ny=4, beta=1e6)]
  batch = stack([pad_instance(i, 3, 4) for i in insts])
  sched = flows.sft_then_rl_schedule(10.0, 20.0)
  run = jax.vmap(lambda inst: flows.run_flow(inst, sched, n_save=2, rtol=RTOL, atol=ATOL))
  trs = run(batch)
  np.testing.assert_array_equal(np.asarray(trs.stiff), [[False, False], [False, True]])
  for b, inst in enumerate(insts):
    one = flows.run_flow(inst, sched, n_save=2, rtol=RTOL, atol=ATOL)
    nx, ny = inst.shape
    for field in ("sft_loss", "reward", "regularized_reward", "kl_data", "kl_reference"):
      assert_close(getattr(trs, field)[b], getattr(one, field), rtol=NUM_RTOL, atol=NUM_ATOL,
                   err_msg=field)
    assert_close(jnp.exp(trs.log_pi[b, :, :nx, :ny]), jnp.exp(one.log_pi), rtol=NUM_RTOL,
                 atol=NUM_ATOL)
    assert np.all(np.exp(np.asarray(trs.log_pi[b, :, :, ny:])) == 0)


def test_grad_cosine_matches_direct_computation():
  inst = _instance(8)
  tr = flows.run_flow(inst, flows.joint_schedule(20.0, 1.0), n_save=2)
  for k in range(tr.times.shape[0]):
    th = obj.logits_of(inst, tr.log_pi[k])
    a = np.asarray(obj.sft_grad(inst, th)).ravel()
    b = np.asarray(obj.rl_grad(inst, th)).ravel()
    assert_close(tr.grad_cosine[k], a @ b / np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-9)
  assert np.all(np.abs(np.asarray(tr.grad_cosine)) <= 1 + 1e-12)


def test_grad_cosine_is_null_where_a_gradient_vanishes():
  """SFT-then-RL from ρ = d: at the start ∇L is rounding (~1e-17), so the cosine is undefined
  (NaN, null in `flow --json` with the reason); along the RL phase it is defined."""
  inst = _instance(9, same_ref=True)
  res = flow_points(inst, "sft_then_rl", 2)
  start = res["points"][0]
  assert start["sft_grad_norm"] < 1e-15 and start["grad_cosine"] is None
  assert "grad L" in start["grad_cosine_undefined"]
  last = res["points"][-1]
  assert last["grad_cosine"] is not None and "grad_cosine_undefined" not in last
  assert res["converged"] and "error" not in res


def test_sgd_is_explicit_euler_and_decreases_the_loss():
  inst = _instance(9)
  lr = 2.0
  tr = optimizer_steps.run_steps(inst, flows.sft_only_schedule(40), optimizer="sgd", learning_rate=lr,
                       n_save=4)
  theta = np.asarray(flows.initial_logits(inst))
  for _ in range(40):
    theta = theta - lr * np.asarray(obj.sft_grad(inst, jnp.asarray(theta)))
  assert_close(tr.log_pi[-1], obj.policy_log_probs(inst, jnp.asarray(theta)), rtol=1e-12)
  assert_close(tr.times, [0, 10, 20, 30, 40], atol=0)
  assert np.all(np.diff(np.asarray(tr.sft_loss)) < 0)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 1.0), ("adam", 0.05)])
def test_optax_rl_steps_increase_the_regularised_reward(optimizer, lr):
  inst = _instance(11)
  tr = optimizer_steps.run_steps(inst, flows.rl_only_schedule(200), optimizer=optimizer, learning_rate=lr,
                       n_save=4)
  j = np.asarray(tr.regularized_reward)
  assert j[-1] > j[0] + 1e-3
  assert j[-1] <= float(obj.rl_value(inst)) + 1e-12
  if optimizer == "sgd":
    assert np.all(np.diff(j) > 0)


def test_optax_pipeline_resets_reference():
  inst = _instance(12)
  tr = optimizer_steps.run_steps(inst, flows.sft_then_rl_schedule(50, 50), optimizer="adam",
                       learning_rate=0.05, n_save=2)
  assert tr.times.shape == (5,) and bool(tr.ok)
  # RL phase starts where SFT ended; SFT phase lowered L.
  assert float(tr.sft_loss[2]) < float(tr.sft_loss[0])


def test_run_pipeline_defaults_and_exact_end_point():
  inst = _instance(13)
  for name in flows.PIPELINE_NAMES:
    tr = flows.run_pipeline(inst, name, n_save=2)
    assert bool(tr.ok)
    assert float(tr.times[-1]) == pytest.approx(10 * float(flows.time_unit(inst)))
  exact = flows.sft_then_rl_endpoint(inst)
  want = obj.gibbs_tilt(dataclasses.replace(inst, reference=inst.data))
  assert_close(exact, want)


def test_stiffness_rate_by_hand_on_a_padded_instance():
  """max_x w_x (|a| + |b| (β + osc_x r)) over real prompts and the RL support, by hand; the host
  copy used to pick the solver before compiling gives the same numbers."""
  inst = make_instance([0.6, 0.4], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
                       [[1.0, -3.0, 50.0], [0.5, -0.5, 0.2]], 2.0,
                       reference=[[0.5, 0.5, 0.0], [0.3, 0.3, 0.4]])  # r = 50 is off the support
  padded = pad_instance(inst, 4, 5)
  by_hand = max(0.6 * (0.5 + 2.0 * (2.0 + 4.0)), 0.4 * (0.5 + 2.0 * (2.0 + 1.0)))
  for i in (inst, padded):
    assert float(flows.stiffness_rate(i, 0.5, 2.0)) == pytest.approx(by_hand, rel=1e-15)
    assert _host_stiffness_rates(i, np.array([0.5]), np.array([2.0]))[0] == pytest.approx(
        by_hand, rel=1e-15)

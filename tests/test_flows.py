"""Gradient flows, pipelines and optax steps (theory/flows.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from conftest import assert_close

from nondecoupling.theory import flows, objectives as obj
from nondecoupling.theory.instance import make_instance, pad_instance, stack


def _instance(seed=0, nx=3, ny=4, beta=0.8, same_ref=False, low=0.2):
  rng = np.random.default_rng(seed)
  d = rng.uniform(low, 1.0, (nx, ny))
  d /= d.sum(1, keepdims=True)
  ref = rng.uniform(low, 1.0, (nx, ny))
  ref /= ref.sum(1, keepdims=True)
  r = rng.uniform(-1, 1, (nx, ny))
  w = rng.uniform(0.5, 1.0, nx)
  return make_instance(w / w.sum(), d, r, beta, reference=d if same_ref else ref)


def _pi(inst, theta):
  return np.exp(np.asarray(obj.policy_log_probs(inst, theta)))


def test_rl_flow_converges_to_gibbs_tilt():
  inst = _instance(1)
  th, ok = flows.rl_flow(inst, jnp.array([50.0, 3000.0]))
  assert bool(ok)
  assert_close(_pi(inst, th[-1]), np.exp(obj.gibbs_tilt(inst)), atol=1e-8, rtol=0)
  # Still far at the first save: the test is not vacuous.
  assert np.max(np.abs(_pi(inst, th[0]) - np.exp(obj.gibbs_tilt(inst)))) > 1e-4


def test_rl_flow_converges_on_sparse_reference():
  inst = _instance(2, beta=0.3)
  ref = np.asarray(inst.reference).copy()
  ref[0, 1] = 0.0
  ref /= ref.sum(1, keepdims=True)
  d = np.asarray(inst.data).copy()
  d[0, 1] = 0.0
  d /= d.sum(1, keepdims=True)
  inst = dataclasses.replace(inst, reference=jnp.asarray(ref), data=jnp.asarray(d))
  th, ok = flows.rl_flow(inst, jnp.array([40000.0]))
  pi = _pi(inst, th[-1])
  assert bool(ok) and pi[0, 1] == 0.0
  assert_close(pi, np.exp(obj.gibbs_tilt(inst)), atol=1e-7, rtol=0)


def test_sft_flow_converges_to_data():
  inst = _instance(3)
  th, ok = flows.sft_flow(inst, jnp.array([6000.0]))
  assert bool(ok)
  assert_close(_pi(inst, th[-1]), inst.data, atol=1e-8, rtol=0)


def test_flow_matches_scipy_solve_ivp():
  inst = _instance(4, beta=0.5)
  lam = 0.7
  ts = np.array([1.0, 5.0, 20.0])
  th, ok = flows.flow(inst, jnp.asarray(ts), 1.0, lam, rtol=1e-11, atol=1e-13)
  w, d, ref, r, beta = (np.asarray(a) for a in (inst.prompt_weights, inst.data, inst.reference,
                                                  inst.reward, inst.beta))

  def rhs(t, y):  # independent numpy field: −∇L + λ∇J_β
    theta = y.reshape(d.shape)
    p = np.exp(theta - theta.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = r - beta * (np.log(p) - np.log(ref))
    fh = p * h - p * (p * h).sum(1, keepdims=True)
    return (-(w[:, None] * (p - d)) + lam * w[:, None] * fh).ravel()

  sol = scipy.integrate.solve_ivp(rhs, (0.0, ts[-1]), np.log(ref).ravel(), t_eval=ts,
                                  method="DOP853", rtol=1e-12, atol=1e-13)
  assert bool(ok) and sol.success
  assert_close(np.asarray(th).reshape(len(ts), -1), sol.y.T, rtol=1e-8, atol=1e-9)


def test_objectives_monotone_along_their_flows():
  inst = _instance(5)
  tr = flows.run_flow(inst, flows.rl_only_schedule(100.0), n_save=20)
  assert np.all(np.diff(np.asarray(tr.regularized_reward)) >= -1e-12)
  tr = flows.run_flow(inst, flows.sft_only_schedule(100.0), n_save=20)
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
  assert_close(jnp.exp(tr.log_pi[-1]), jnp.exp(want), atol=1e-7, rtol=0)
  # Not the tilt of the base reference (the reset matters here).
  assert np.max(np.abs(np.exp(tr.log_pi[-1]) - np.exp(obj.gibbs_tilt(inst)))) > 1e-3


def test_rl_then_sft_and_joint_end_points():
  inst = _instance(7)
  tr = flows.run_flow(inst, flows.rl_then_sft_schedule(4000.0, 30.0), n_save=2)
  assert_close(jnp.exp(tr.log_pi[2]), jnp.exp(obj.gibbs_tilt(inst)), atol=1e-7, rtol=0)
  # Joint flow's end point is stationary for L − λJ_β: the field vanishes there.
  tr = flows.run_flow(inst, flows.joint_schedule(5000.0, 2.0), n_save=2)
  theta = flows.logits_of(inst, tr.final_log_pi)
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


def test_vmap_over_padded_batch_matches_single_runs():
  insts = [_instance(10 + i, nx=2 + i % 2, ny=3 + i % 2, beta=0.5 + i) for i in range(2)]
  batch = stack([pad_instance(i, 3, 4) for i in insts])
  sched = flows.sft_then_rl_schedule(10.0, 20.0)
  run = jax.vmap(lambda inst: flows.run_flow(inst, sched, n_save=3, rtol=1e-12, atol=1e-14))
  trs = run(batch)
  for b, inst in enumerate(insts):
    one = flows.run_flow(inst, sched, n_save=3, rtol=1e-12, atol=1e-14)
    nx, ny = inst.shape
    for field in ("sft_loss", "reward", "regularized_reward", "kl_data", "kl_reference",
                  "sft_grad_norm", "rl_grad_norm", "grad_cosine"):
      assert_close(getattr(trs, field)[b], getattr(one, field), rtol=1e-8, atol=1e-11,
                   err_msg=field)
    assert_close(jnp.exp(trs.log_pi[b, :, :nx, :ny]), jnp.exp(one.log_pi), rtol=1e-7, atol=1e-9)
    assert np.all(np.exp(np.asarray(trs.log_pi[b, :, :, ny:])) == 0)


def test_grad_cosine_matches_direct_computation():
  inst = _instance(8)
  tr = flows.run_flow(inst, flows.joint_schedule(20.0, 1.0), n_save=3)
  for k in range(tr.times.shape[0]):
    th = flows.logits_of(inst, tr.log_pi[k])
    a = np.asarray(obj.sft_grad(inst, th)).ravel()
    b = np.asarray(obj.rl_grad(inst, th)).ravel()
    assert_close(tr.grad_cosine[k], a @ b / np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-9)
  assert np.all(np.abs(np.asarray(tr.grad_cosine)) <= 1 + 1e-12)


def test_sgd_is_explicit_euler_and_decreases_the_loss():
  inst = _instance(9)
  lr = 2.0
  tr = flows.run_steps(inst, flows.sft_only_schedule(40), optimizer="sgd", learning_rate=lr, n_save=4)
  theta = np.asarray(flows.initial_logits(inst))
  for _ in range(40):
    theta = theta - lr * np.asarray(obj.sft_grad(inst, jnp.asarray(theta)))
  assert_close(tr.log_pi[-1], obj.policy_log_probs(inst, jnp.asarray(theta)), rtol=1e-12)
  assert_close(tr.times, [0, 10, 20, 30, 40], atol=0)
  assert np.all(np.diff(np.asarray(tr.sft_loss)) < 0)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 1.0), ("adam", 0.05)])
def test_optax_rl_steps_increase_the_regularised_reward(optimizer, lr):
  inst = _instance(11)
  tr = flows.run_steps(inst, flows.rl_only_schedule(200), optimizer=optimizer, learning_rate=lr, n_save=5)
  j = np.asarray(tr.regularized_reward)
  assert j[-1] > j[0] + 1e-3
  assert j[-1] <= float(obj.rl_value(inst)) + 1e-12
  if optimizer == "sgd":
    assert np.all(np.diff(j) > 0)


def test_optax_pipeline_resets_reference():
  inst = _instance(12)
  tr = flows.run_steps(inst, flows.sft_then_rl_schedule(50, 50), optimizer="adam", learning_rate=0.05,
                       n_save=2)
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

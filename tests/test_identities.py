"""THEORY.md part B: exact identities and closed-form gradients, on Hypothesis instances.

Each side of every identity is checked against the mpmath reference (tests/mp_reference.py) to
within the rounding bound the statement computes for itself (Verdict.slack), at random policies;
gradients against jax.grad and a generic optimiser (scipy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, TOL_NUMERICAL, assert_close
from helpers import at_probe, instance_of, jitted, with_probe
from hypothesis import given
from mp_reference import Problem

from nondecoupling.theory.objectives import (
  c1,
  gibbs_tilt,
  policy_log_probs,
  regularized_reward,
  rl_grad,
  rl_value,
  safe_log,
  sft_grad,
  sft_loss,
  sft_optimum_loss,
)
from nondecoupling.theory.statements import identities, joint_bound
from nondecoupling.theory.verdict import holds
from nondecoupling.verify.strategies import instance_strategy

_STATEMENTS = {"B1 sft_excess_is_kl": identities.sft_excess_is_kl,
               "B2 gibbs_variational": identities.gibbs_variational,
               "B4 reward_change_after_rl": identities.reward_change_after_rl,
               "D3 joint_bound": joint_bound.joint_bound}


def _probe_log_policy(inst, log_pi):
  return log_pi


def _absolute_slack(name, v):
  """The slack in the units of the sides (identities normalise by max(1, |lhs|, |rhs|))."""
  slack = float(v.slack)
  if name.startswith("D3"):
    return slack
  return slack * max(1.0, abs(float(v.lhs)), abs(float(v.rhs)))


def _reference(raw):
  return Problem(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"], raw["beta"])


@pytest.mark.parametrize("name", sorted(_STATEMENTS))
@given(example=with_probe())
def test_policy_identities_and_d3_sides_match_mpmath(name, example):
  """B1, B2, B4 (identities) and D3 (a bound) at a random policy π: each computed side is within
  the statement's rounding slack of the exact side, and the statement holds."""
  raw, theta = example
  inst = instance_of(raw)
  v = at_probe(_STATEMENTS[name], inst, theta)
  log_pi = np.asarray(at_probe(_probe_log_policy, inst, theta))[: raw["data"].shape[0],
                                                             : raw["data"].shape[1]]
  ref = _reference(raw)
  lhs, rhs = ref.sides(log_pi)[name]
  tol = _absolute_slack(name, v) + float(ref.margin_resolution())
  assert abs(float(v.lhs) - float(lhs)) <= tol, (name, float(v.lhs), float(lhs), tol)
  assert abs(float(v.rhs) - float(rhs)) <= tol, (name, float(v.rhs), float(rhs), tol)
  assert bool(holds(v.margin, v.slack)), (name, v)


@given(instance_strategy())
def test_b3_sft_loss_after_rl_any_reference_matches_mpmath(raw):
  v = jitted(identities.sft_loss_after_rl)(instance_of(raw))
  ref = _reference(raw)
  with np.errstate(divide="ignore"):
    log_d = np.log(np.asarray(raw["data"]))
  lhs, rhs = ref.sides(log_d)["B3 sft_loss_after_rl"]
  tol = _absolute_slack("B3", v) + float(ref.margin_resolution())
  assert abs(float(v.lhs) - float(lhs)) <= tol and abs(float(v.rhs) - float(rhs)) <= tol, v
  assert bool(holds(v.margin, v.slack)), v


_grad_sft = jax.grad(lambda i, t: sft_loss(i, policy_log_probs(i, t)), argnums=1)
_grad_rl = jax.grad(lambda i, t: regularized_reward(i, policy_log_probs(i, t)), argnums=1)


@given(with_probe())
def test_b5_closed_form_gradients_equal_autodiff(example):
  raw, theta = example
  inst = instance_of(raw)
  th = np.zeros(inst.shape)
  th[: theta.shape[0], : theta.shape[1]] = theta
  th = jnp.asarray(th)
  assert_close(jitted(sft_grad)(inst, th), jitted(_grad_sft)(inst, th))
  assert_close(jitted(rl_grad)(inst, th), jitted(_grad_rl)(inst, th))
  v = jitted(identities.gradients_closed_form)(inst, th)
  assert bool(holds(v.margin, v.slack)), v


def test_gradient_forms_agree_with_fisher_form():
  """∇L = −w F (d/π) and ∇J_β = w β F log(π*/π) (the second forms of B5)."""
  rng = np.random.default_rng(0)
  d = rng.dirichlet(np.ones(5), size=3)
  inst = instance_of({"prompt_weights": np.array([0.2, 0.3, 0.5]), "data": d, "reference": d,
                      "reward": rng.normal(size=(3, 5)), "beta": 0.7}, bucket=None)
  theta = jnp.asarray(rng.normal(size=(3, 5)))
  pi = jnp.exp(policy_log_probs(inst, theta))
  fisher = lambda v: pi * v - pi * jnp.sum(pi * v, -1, keepdims=True)
  w = inst.prompt_weights[:, None]
  assert_close(sft_grad(inst, theta), -w * fisher(inst.data / pi))
  assert_close(rl_grad(inst, theta), w * inst.beta * fisher(gibbs_tilt(inst) - jnp.log(pi)))


def test_gibbs_tilt_maximises_regularised_reward_against_scipy():
  """π*_β = argmax J_β: a generic optimiser (scipy BFGS over logits) finds the same value/policy.

  Every BFGS iterate is a softmax, hence a feasible policy: its J_β can never exceed the exact
  optimum (up to float64 rounding), and it converges to it (to the optimiser's tolerance).
  """
  from scipy.optimize import minimize
  rtol, atol = TOL[np.dtype(np.float64)]
  rng = np.random.default_rng(1)
  for trial in range(4):
    nx, ny = 2 + trial % 2, 3 + trial
    ref = rng.dirichlet(np.ones(ny), size=nx)
    inst = instance_of({"prompt_weights": rng.dirichlet(np.ones(nx)), "data": ref,
                        "reference": ref, "reward": rng.uniform(-1, 1, (nx, ny)),
                        "beta": float(rng.uniform(0.2, 2.0))}, bucket=None)
    obj = jax.jit(lambda t: -regularized_reward(inst, policy_log_probs(inst, t.reshape(nx, ny))))
    grad = jax.jit(jax.grad(lambda t: -regularized_reward(
        inst, policy_log_probs(inst, t.reshape(nx, ny)))))
    res = minimize(lambda t: float(obj(jnp.asarray(t))), np.zeros(nx * ny),
                   jac=lambda t: np.asarray(grad(jnp.asarray(t))), method="BFGS",
                   options={"gtol": 1e-12, "maxiter": 10_000})
    found = -float(obj(jnp.asarray(res.x)))  # J_β at the (feasible) point BFGS stopped at
    exact = float(rl_value(inst))
    assert found <= exact + atol + rtol * abs(exact), (found, exact)
    assert_close(found, exact, *TOL_NUMERICAL)
    pi_opt = jnp.exp(policy_log_probs(inst, jnp.asarray(res.x).reshape(nx, ny)))
    assert_close(pi_opt, jnp.exp(gibbs_tilt(inst)), *TOL_NUMERICAL)


def test_sft_optimum_is_data():
  rng = np.random.default_rng(2)
  d = rng.dirichlet(np.ones(4), size=3)
  inst = instance_of({"prompt_weights": np.ones(3) / 3, "data": d, "reference": d,
                      "reward": np.zeros((3, 4)), "beta": 1.0}, bucket=None)
  base = float(sft_loss(inst, safe_log(inst.data)))
  assert_close(base, -np.sum(np.ones(3) / 3 @ (d * np.log(d)).sum(1)))
  assert_close(base, sft_optimum_loss(inst))
  for _ in range(5):
    other = jnp.asarray(rng.normal(size=(3, 4)))
    assert float(sft_loss(inst, policy_log_probs(inst, other))) > base


@given(instance_strategy())
def test_padding_does_not_change_any_quantity(raw):
  from nondecoupling.theory.quantities import check_quantities
  small = jitted(check_quantities)(instance_of(raw, bucket=(3, 4)))
  big = jitted(check_quantities)(instance_of(raw, bucket=(4, 6)))
  for k in small:
    a, b = float(small[k]), float(big[k])
    if np.isnan(a):
      assert np.isnan(b), k
    else:
      assert_close(b, a, err_msg=k)


def test_c1_closed_form_example():
  inst = instance_of({"prompt_weights": np.array([1.0]), "data": np.array([[0.5, 0.5]]),
                      "reference": np.array([[0.5, 0.5]]), "reward": np.array([[0.0, 1.0]]),
                      "beta": 1.0}, bucket=None)
  assert_close(c1(inst), np.log((1 + np.e) / 2) - 0.5)


@pytest.mark.parametrize("chunk", [1, 3, 10, 64])
def test_batch_check_quantities_in_chunks_match_the_numpy_reference(chunk):
  """batch_check_quantities (lax.map over chunks of the batch, remainders included) against the
  independent per-instance NumPy/SciPy reference (Brent for β_c)."""
  from nondecoupling.theory.instance import Instance
  from nondecoupling.theory.quantities import batch_check_quantities
  from nondecoupling.verify.numpy_reference import reference_quantities
  rng = np.random.default_rng(5)
  n, nx, ny = 10, 3, 4
  w = rng.dirichlet(np.ones(nx), n)
  d = rng.dirichlet(np.ones(ny), (n, nx))
  ref = rng.dirichlet(np.ones(ny), (n, nx))
  r = rng.uniform(-1, 1, (n, nx, ny))
  beta = np.exp(rng.uniform(np.log(0.05), np.log(5.0), n))
  batch = Instance(prompt_weights=jnp.asarray(w), data=jnp.asarray(d), reference=jnp.asarray(ref),
                   reward=jnp.asarray(r), beta=jnp.asarray(beta),
                   response_mask=jnp.ones((n, nx, ny), bool))
  got = jax.jit(lambda b: batch_check_quantities(b, chunk))(batch)
  for i in range(n):
    want = reference_quantities(w[i], d[i], ref[i], r[i], beta[i])
    for k, v in want.items():
      if v is None:
        assert np.isnan(got[k][i]), (i, k)
      else:
        assert_close(got[k][i], v, err_msg=f"{i} {k}")
  with pytest.raises(ValueError, match="chunk must be at least 1"):
    batch_check_quantities(batch, 0)

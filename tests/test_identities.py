"""THEORY.md part B: exact identities and closed-form gradients, on Hypothesis instances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL, TOL_NUMERICAL, assert_close
from helpers import at_probe, instance_of, jitted, with_probe
from hypothesis import given

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
from nondecoupling.theory.statements import identities
from nondecoupling.verify.strategies import instance_strategy

REL = 1e-10  # float64 identities: relative residual


@pytest.mark.parametrize("identity", [identities.sft_excess_is_kl,  # B1
                                      identities.gibbs_variational,  # B2
                                      identities.reward_change_after_rl],  # B4
                         ids=["B1", "B2", "B4"])
@given(example=with_probe())
def test_policy_identities_b1_b2_b4(identity, example):
  raw, theta = example
  v = at_probe(identity, instance_of(raw), theta)
  assert float(v.margin) >= -REL, v


@given(instance_strategy())
def test_b3_sft_loss_after_rl_any_reference(raw):
  v = jitted(identities.sft_loss_after_rl)(instance_of(raw))
  assert float(v.margin) >= -REL, v


_grad_sft = jax.grad(lambda i, t: sft_loss(i, policy_log_probs(i, t)), argnums=1)
_grad_rl = jax.grad(lambda i, t: regularized_reward(i, policy_log_probs(i, t)), argnums=1)


@given(with_probe())
def test_b5_closed_form_gradients_equal_autodiff(example):
  raw, theta = example
  inst = instance_of(raw)
  th = np.zeros(inst.shape)
  th[: theta.shape[0], : theta.shape[1]] = theta
  th = jnp.asarray(th)
  auto_l = jitted(_grad_sft)(inst, th)
  auto_j = jitted(_grad_rl)(inst, th)
  assert_close(jitted(sft_grad)(inst, th), auto_l, rtol=1e-10, atol=1e-12)
  assert_close(jitted(rl_grad)(inst, th), auto_j, rtol=1e-10, atol=1e-12)


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
      assert_close(b, a, rtol=1e-9, atol=1e-12, err_msg=k)


def test_c1_closed_form_example():
  inst = instance_of({"prompt_weights": np.array([1.0]), "data": np.array([[0.5, 0.5]]),
                      "reference": np.array([[0.5, 0.5]]), "reward": np.array([[0.0, 1.0]]),
                      "beta": 1.0}, bucket=None)
  assert_close(c1(inst), np.log((1 + np.e) / 2) - 0.5)

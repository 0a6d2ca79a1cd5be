"""THEORY.md D1-D3 (this project's results), the `check` quantities against an independent
NumPy/SciPy reference, and extreme β."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_close
from helpers import at_probe, instance_of, jitted, with_probe
from hypothesis import given

from nondecoupling.theory.instance import rl_stage_after_sft
from nondecoupling.theory.objectives import (
  c1,
  policy_log_probs,
  rl_grad,
  rl_support,
  safe_log,
  sft_loss,
)
from nondecoupling.theory.quantities import check_quantities
from nondecoupling.theory.statements import critical_beta, initial_rates, joint_bound
from nondecoupling.verify.families import FAMILIES
from nondecoupling.verify.numpy_reference import reference_quantities
from nondecoupling.verify.strategies import instance_strategy


@given(instance_strategy())
def test_d1_critical_beta_is_the_unique_sign_change(raw):
  inst = instance_of(raw)
  bc = float(jitted(critical_beta.beta_critical)(inst))
  w, d, ref, r = (np.asarray(raw[k], float) for k in ("prompt_weights", "data", "reference",
                                                         "reward"))
  gain = w @ (d * r).sum(1) - w @ (ref * r).sum(1)
  if np.isnan(bc):
    # No root in the bracket: then C₁ has one sign at both ends (ours: g = βC₁ is monotone).
    lo = float(critical_beta.scaled_c1(inst, jnp.asarray(critical_beta.LOG_BETA_BRACKET[0])))
    hi = float(critical_beta.scaled_c1(inst, jnp.asarray(critical_beta.LOG_BETA_BRACKET[1])))
    assert not (lo > 0 and hi < 0)
    assert lo >= hi - 1e-12  # non-increasing
    return
  assert gain > 0  # D1 necessary condition
  for factor, sign in ((0.5, 1.0), (2.0, -1.0)):
    at = dataclasses.replace(inst, beta=jnp.asarray(bc * factor))
    assert sign * float(c1(at)) > 0


def test_d1_critical_beta_matches_brent():
  from nondecoupling.verify.numpy_reference import reference_beta_critical
  rng = np.random.default_rng(3)
  found = 0
  for _ in range(40):
    nx, ny = 2, 4
    d = rng.dirichlet(np.ones(ny), nx)
    ref = rng.dirichlet(np.ones(ny), nx)
    r = rng.uniform(-1, 1, (nx, ny))
    w = rng.dirichlet(np.ones(nx))
    expected = reference_beta_critical(w, d, ref, r)
    inst = instance_of({"prompt_weights": w, "data": d, "reference": ref, "reward": r,
                        "beta": 1.0}, bucket=(2, 4))
    got = float(jitted(critical_beta.beta_critical)(inst))
    if expected is None:
      assert np.isnan(got)
    else:
      found += 1
      assert_close(got, expected, rtol=1e-8)
  assert found >= 5


@given(instance_strategy())
def test_d2_slope_and_curvature_closed_forms_equal_autodiff(raw):
  inst = instance_of(raw)
  assert float(jitted(initial_rates.rl_slope_at_start)(inst).margin) >= -1e-10
  v = jitted(initial_rates.rl_curvature_at_sft_optimum)(inst)
  assert float(v.margin) >= -1e-10
  assert float(v.lhs) >= -1e-14  # a quadratic form of a PSD Hessian


def _rk4_rl_flow(inst, theta, t, steps):
  h = t / steps
  f = lambda th: rl_grad(inst, th)
  for _ in range(steps):
    k1 = f(theta)
    k2 = f(theta + 0.5 * h * k1)
    k3 = f(theta + 0.5 * h * k2)
    k4 = f(theta + h * k3)
    theta = theta + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  return theta


def test_d2_against_finite_differences_of_the_integrated_flow():
  """Slope (any ρ) and curvature (ρ = d) against central differences of an RK4-integrated flow."""
  rng = np.random.default_rng(4)
  d = rng.dirichlet(np.ones(4), 3)
  ref = rng.dirichlet(np.ones(4), 3)
  raw = {"prompt_weights": np.array([0.2, 0.3, 0.5]), "data": d, "reference": ref,
         "reward": rng.uniform(-1, 1, (3, 4)), "beta": 0.5}
  for sft_first in (False, True):
    inst = instance_of(raw, bucket=None)
    if sft_first:
      inst = rl_stage_after_sft(inst)
    theta0 = jnp.where(rl_support(inst), safe_log(inst.reference), 0.0)
    loss = lambda th: float(sft_loss(inst, policy_log_probs(inst, th)))
    h = 1e-3
    plus = _rk4_rl_flow(inst, theta0, h, 4)
    minus = _rk4_rl_flow(inst, theta0, -h, 4)
    l0, lp, lm = loss(theta0), loss(plus), loss(minus)
    slope, curv = (lp - lm) / (2 * h), (lp - 2 * l0 + lm) / h ** 2
    assert_close(slope, float(initial_rates.initial_slope(inst)), rtol=1e-5, atol=1e-9)
    if sft_first:
      assert abs(float(initial_rates.initial_slope(inst))) < 1e-15
      assert_close(curv, float(initial_rates.initial_curvature(inst)), rtol=1e-4, atol=1e-8)


@given(with_probe())
def test_d3_joint_bound_for_any_policy(example):
  raw, theta = example
  assert float(at_probe(joint_bound.joint_bound, instance_of(raw), theta).margin) >= -1e-12


def test_d3_at_the_two_optima():
  """At π = d, ΔL = 0 and the bound reads √(β KL(d‖π*)/(2β)) ≥ TV (Pinsker)."""
  rng = np.random.default_rng(5)
  d = rng.dirichlet(np.ones(5), 2)
  inst = instance_of({"prompt_weights": np.array([0.5, 0.5]), "data": d, "reference": d,
                      "reward": rng.normal(size=(2, 5)), "beta": 0.3}, bucket=None)
  v = joint_bound.joint_bound(inst, safe_log(inst.data))
  assert float(v.margin) >= 0


@given(instance_strategy(max_prompts=4, max_responses=5, beta_range=(1e-3, 1e3)))
def test_check_quantities_agree_with_independent_numpy_reference(raw):
  q = jitted(check_quantities)(instance_of(raw, bucket=(4, 5)))
  ref = reference_quantities(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"],
                             raw["beta"])
  for k, expected in ref.items():
    got = float(q[k])
    if expected is None:
      assert np.isnan(got), k
      continue
    scale = max(1.0, abs(expected), np.max(np.abs(raw["reward"])) / raw["beta"])
    assert abs(got - expected) <= 1e-9 * scale, (k, got, expected)


def test_extreme_beta_has_no_overflow_or_nan():
  """β from 1e-3 to 1e3 with |r| = 1 (|r|/β up to 1e3): every quantity finite (β_c may be NaN)."""
  evaluate = jax.jit(jax.vmap(check_quantities))
  for name, family in FAMILIES.items():
    batch = family(np.random.default_rng(6), 64)
    for beta in (1e-3, 1e3):
      b = dataclasses.replace(batch, beta=jnp.full_like(batch.beta, beta))
      q = evaluate(b)
      for k, v in q.items():
        if k != "beta_critical":
          assert np.all(np.isfinite(np.asarray(v))), (name, beta, k)

"""THEORY.md D1-D3 (this project's results), the `check` quantities against an independent
NumPy/SciPy reference, and extreme β."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL_NUMERICAL, assert_close, assert_conditioned
from helpers import instance_of, jitted
from hypothesis import given
from mp_reference import Problem

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
from nondecoupling.theory.verdict import holds
from nondecoupling.verify.families import FAMILIES
from nondecoupling.verify.numpy_reference import reference_quantities
from nondecoupling.verify.strategies import instance_strategy


@given(instance_strategy())
def test_d1_critical_beta_is_the_unique_sign_change(raw):
  """β_c exists exactly when the mpmath reference finds a sign change of C₁ (to the root's
  conditioning), and C₁ has the predicted sign on both sides of it."""
  inst = instance_of(raw)
  bc = float(jitted(critical_beta.beta_critical)(inst))
  ref = Problem(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"], raw["beta"])
  want, scale = ref.beta_critical_scaled()
  if want is None:
    assert np.isnan(bc)
    return
  assert_conditioned(bc, want, scale, err_msg="beta_critical")
  w, d, rho, r = (np.asarray(raw[k], float) for k in ("prompt_weights", "data", "reference",
                                                         "reward"))
  assert w @ (d * r).sum(1) > w @ (rho * r).sum(1)  # D1 necessary condition
  for factor, sign in ((0.5, 1.0), (2.0, -1.0)):
    at = dataclasses.replace(inst, beta=jnp.asarray(bc * factor))
    assert sign * float(jitted(c1)(at)) > 0
    assert sign * float(ref.c1(want * factor)) > 0


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
      assert_close(got, expected)
  assert found >= 5


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_d1_batched_critical_beta_keeps_each_instance_in_its_place(chunk):
  """batch_beta_critical (instances with a root sorted first, chunks without one skipping
  Newton, the remainder chunk padded) against Brent per instance, in the batch's own order."""
  from nondecoupling.theory.instance import stack
  from nondecoupling.verify.numpy_reference import reference_beta_critical
  rng = np.random.default_rng(11)
  insts, expected = [], []
  for _ in range(23):
    d = rng.dirichlet(np.ones(4), 2)
    ref = rng.dirichlet(np.ones(4), 2)
    r = rng.uniform(-1, 1, (2, 4))
    w = rng.dirichlet(np.ones(2))
    expected.append(reference_beta_critical(w, d, ref, r))
    insts.append(instance_of({"prompt_weights": w, "data": d, "reference": ref, "reward": r,
                              "beta": 1.0}, bucket=(2, 4)))
  assert 5 <= sum(e is not None for e in expected) <= 18  # roots and no roots, interleaved
  got = np.asarray(jax.jit(lambda b: critical_beta.batch_beta_critical(b, chunk))(stack(insts)))
  for i, want in enumerate(expected):
    if want is None:
      assert np.isnan(got[i]), i
    else:
      assert_close(got[i], want, err_msg=str(i))
  with pytest.raises(ValueError, match="chunk must be at least 1"):
    critical_beta.batch_beta_critical(stack(insts), 0)
  empty = jax.tree.map(lambda a: a[:0], stack(insts))
  assert critical_beta.batch_beta_critical(empty, chunk).shape == (0,)


@given(instance_strategy())
def test_d2_slope_and_curvature_closed_forms_equal_autodiff(raw):
  """The closed forms agree with autodiff within their rounding slack and with the independent
  NumPy derivation; the curvature, a quadratic form of a PSD Hessian, is ≥ 0."""
  inst = instance_of(raw)
  slope = jitted(initial_rates.rl_slope_at_start)(inst)
  curv = jitted(initial_rates.rl_curvature_at_sft_optimum)(inst)
  assert bool(holds(slope.margin, slope.slack)) and bool(holds(curv.margin, curv.slack))
  ref = reference_quantities(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"],
                             raw["beta"])
  assert_close(float(slope.lhs), ref["initial_slope"])
  assert_close(float(curv.lhs), ref["initial_curvature"])
  assert float(curv.lhs) >= 0  # a sum of non-negative terms in its closed form


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
    assert_close(slope, float(initial_rates.initial_slope(inst)), *TOL_NUMERICAL)
    if sft_first:
      assert float(initial_rates.initial_slope(inst)) == 0.0  # ρ − d vanishes exactly
      # A second difference at h = 1e-3 of an RK4 flow: truncation O(h²) ≈ 1e-6, rounding
      # ε/h² ≈ 2e-10 of the loss.
      assert_close(curv, float(initial_rates.initial_curvature(inst)), rtol=1e-4, atol=1e-8)


def test_d3_at_the_two_optima():
  """At π = d, ΔL = 0 and the bound reads √(KL(d‖π*)/2) ≥ TV(d, π*) (Pinsker): both sides against
  a NumPy/SciPy derivation."""
  from scipy.special import rel_entr, softmax
  rng = np.random.default_rng(5)
  d = rng.dirichlet(np.ones(5), 2)
  r = rng.normal(size=(2, 5))
  inst = instance_of({"prompt_weights": np.array([0.5, 0.5]), "data": d, "reference": d,
                      "reward": r, "beta": 0.3}, bucket=None)
  v = joint_bound.joint_bound(inst, safe_log(inst.data))
  star = softmax(np.log(d) + r / 0.3, axis=-1)
  assert_close(float(v.lhs), np.sqrt(0.5 * rel_entr(d, star).sum(-1).mean()))
  assert_close(float(v.rhs), 0.5 * np.abs(d - star).sum(-1).mean())
  assert float(v.margin) > float(v.slack)


@given(instance_strategy(max_prompts=4, max_responses=5))
def test_check_quantities_agree_with_independent_numpy_reference(raw):
  """Against the straightforward NumPy/SciPy implementation, where its literal formulas are
  accurate (β in [1e-2, 1e2], |r| ≤ 2); extreme β and near ties are checked against mpmath
  (tests/test_precision.py)."""
  q = jitted(check_quantities)(instance_of(raw, bucket=(4, 5)))
  ref = reference_quantities(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"],
                             raw["beta"])
  for k, expected in ref.items():
    got = float(q[k])
    if expected is None:
      assert np.isnan(got), k
      continue
    assert_close(got, expected, err_msg=k)


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

"""The exact SFT-reward frontier and decoupling regret (this project's D4).

Cross-checks against scipy's SLSQP on small instances, the KKT conditions, the off-support case,
the degenerate one-prompt-two-responses case and the sign of the regret.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize

from nondecoupling.theory import frontier as fr, objectives as obj
from nondecoupling.theory.instance import make_instance, pad_instance, stack


def random_instance(seed: int, n_x: int = 2, n_y: int = 4, zeros: bool = True, beta=0.5):
  rng = np.random.default_rng(seed)
  d = rng.dirichlet(np.ones(n_y) * 0.8, n_x)
  if zeros:
    for x in range(n_x):
      k = rng.integers(0, n_y - 1)  # zero out up to n_y - 2 entries
      idx = rng.choice(n_y, size=k, replace=False)
      d[x, idx] = 0.0
      if d[x].sum() == 0:
        d[x, 0] = 1.0
      d[x] /= d[x].sum()
  r = rng.normal(size=(n_x, n_y))
  w = rng.dirichlet(np.ones(n_x))
  return make_instance(w, d, r, beta)


def pad(inst, n_x, n_y):
  return pad_instance(inst, n_x, n_y)


def scipy_penalised(inst, lam):
  """argmin_π Σ_x w_x [-Σ d log π − λ Σ π r] over the product of simplices (SLSQP)."""
  d = np.asarray(inst.data)
  r = np.asarray(inst.reward)
  w = np.asarray(inst.prompt_weights)
  out = []
  for x in range(d.shape[0]):
    s = d[x] > 0

    def f(p, x=x, s=s):
      return -np.sum(d[x][s] * np.log(p[s])) - lam * np.dot(p, r[x])

    def grad(p, x=x, s=s):
      g = -lam * r[x].copy()
      g[s] -= d[x][s] / p[s]
      return g

    bounds = [(1e-14 if s[y] else 0.0, 1.0) for y in range(d.shape[1])]
    cons = [{"type": "eq", "fun": lambda p: p.sum() - 1.0, "jac": lambda p: np.ones_like(p)}]
    best = None
    for start in (d[x] * 0.5 + 0.5 / d.shape[1], np.full(d.shape[1], 1.0 / d.shape[1])):
      res = minimize(f, start, jac=grad, bounds=bounds, constraints=cons, method="SLSQP",
                     options=dict(ftol=1e-15, maxiter=2000))
      if best is None or res.fun < best.fun:
        best = res
    out.append(best.x)
  del w
  return np.array(out)


def scipy_constrained(inst, target):
  """min L(π) s.t. J(π) ≥ target over the product of simplices (SLSQP, joint over prompts)."""
  d = np.asarray(inst.data)
  r = np.asarray(inst.reward)
  w = np.asarray(inst.prompt_weights)
  n_x, n_y = d.shape
  s = d > 0

  def f(v):
    p = v.reshape(n_x, n_y)
    return -np.sum(w[:, None] * np.where(s, d * np.log(np.where(s, p, 1.0)), 0.0))

  def grad(v):
    p = v.reshape(n_x, n_y)
    return (-w[:, None] * np.where(s, d / np.where(s, p, 1.0), 0.0)).ravel()

  cons = [{"type": "ineq", "fun": lambda v: np.sum(w[:, None] * v.reshape(n_x, n_y) * r) - target,
           "jac": lambda v: (w[:, None] * r).ravel()}]
  for x in range(n_x):
    sel = np.zeros(n_x * n_y)
    sel[x * n_y:(x + 1) * n_y] = 1.0
    cons.append({"type": "eq", "fun": lambda v, sel=sel: sel @ v - 1.0,
                 "jac": lambda v, sel=sel: sel})
  bounds = [(1e-14 if s.ravel()[i] else 0.0, 1.0) for i in range(n_x * n_y)]
  start = (0.5 * d + 0.5 / n_y).ravel()
  res = minimize(f, start, jac=grad, bounds=bounds, constraints=cons, method="SLSQP",
                 options=dict(ftol=1e-13, maxiter=3000))
  # SLSQP may stop on a line-search warning at the optimum; accept any feasible end point.
  p = res.x.reshape(n_x, n_y)
  assert np.all(np.abs(p.sum(-1) - 1.0) < 1e-8), res.message
  assert np.sum(w[:, None] * p * r) >= target - 1e-8, res.message
  return res.fun


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0, 7.0])
def test_frontier_policy_matches_scipy(seed, lam):
  inst = random_instance(seed)
  pi = np.exp(np.asarray(fr.frontier_policy(inst, lam)))
  ref = scipy_penalised(inst, lam)
  np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(pi, ref, atol=2e-6)
  # The penalised objective is at least as good as scipy's (ours is exact).
  def value(p):
    lp = jnp.log(jnp.asarray(p))
    return float(obj.sft_loss(inst, lp) - lam * obj.reward(inst, lp))
  assert value(pi) <= value(np.clip(ref, 0, None)) + 1e-10


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("frac", [0.2, 0.6, 0.9])
def test_min_sft_loss_matches_constrained_scipy(seed, frac):
  inst = random_instance(seed + 10, n_x=2, n_y=3)
  j_d = float(obj.reward(inst, jnp.log(inst.data)))
  j_max = float(fr.max_reward(inst))
  target = j_d + frac * (j_max - j_d)
  lam, ours = fr.frontier_at_reward(inst, target)
  ref = scipy_constrained(inst, target)
  assert float(ours) <= ref + 1e-9
  assert_close(ours, ref, rtol=1e-6, atol=1e-6)
  # The λ found reaches the target with the same loss.
  l_lam, j_lam = fr.frontier_point(inst, lam)
  assert_close(j_lam, target, rtol=1e-8, atol=1e-8)
  assert_close(l_lam, ours, rtol=1e-8, atol=1e-8)


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.0, 50.0), n_y=st.integers(2, 6))
def test_kkt_conditions(seed, lam, n_y):
  inst = random_instance(seed, n_x=3, n_y=n_y)
  pi = np.exp(np.asarray(fr.frontier_policy(inst, lam)))
  d = np.asarray(inst.data)
  r = np.asarray(inst.reward)
  np.testing.assert_allclose(pi.sum(-1), 1.0, atol=1e-12)
  for x in range(d.shape[0]):
    s = d[x] > 0
    assert np.all(pi[x][s] > 0)
    # Stationarity on S: ν = d/π + λ r is the same for every y in S.
    nu = d[x][s] / pi[x][s] + lam * r[x][s]
    np.testing.assert_allclose(nu, nu[0], rtol=1e-9, atol=1e-9)
    # Dual feasibility off S: ν − λ r ≥ 0, with equality where π > 0 (complementary slackness).
    slack = nu[0] - lam * r[x][~s]
    assert np.all(slack >= -1e-9 * max(1.0, abs(nu[0])))
    pos = pi[x][~s] > 0
    np.testing.assert_allclose(slack[pos], 0.0, atol=1e-9 * max(1.0, abs(nu[0])))


def test_lambda_zero_is_data_and_large_lambda_is_argmax():
  inst = random_instance(3, n_x=3, n_y=5)
  assert_close(np.exp(fr.frontier_policy(inst, 0.0)), inst.data)
  pi = np.exp(np.asarray(fr.frontier_policy(inst, 1e9)))
  best = np.argmax(np.asarray(inst.reward), axis=-1)
  np.testing.assert_allclose(pi[np.arange(3), best], 1.0, atol=1e-6)
  l_val, j_val = fr.frontier_curve(inst, [0.0, 1e9])
  assert_close(l_val[0], obj.sft_optimum_loss(inst))
  assert_close(j_val[1], fr.max_reward(inst), rtol=1e-6, atol=1e-6)


def test_off_support_case_exact():
  # S = {0, 1} with rewards 0 and 1; u = 2 has reward 3 and d(u) = 0.
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 3.0]], 1.0)
  for lam in (0.1, 0.3, 0.5, 1.0, 4.0):
    pi = np.exp(np.asarray(fr.frontier_policy(inst, lam)))[0]
    t_u = lam * 2.0  # λ (r(u) − max_S r)
    s = 0.5 / (lam * 3.0) + 0.5 / (lam * 2.0)
    if s <= 1.0:
      np.testing.assert_allclose(pi, [0.5 / (lam * 3.0), 0.5 / (lam * 2.0), 1.0 - s], atol=1e-12)
    else:
      assert pi[2] == 0.0
      # root on S: 0.5/(t + λ) + 0.5/t = 1
      np.testing.assert_allclose(pi[:2].sum(), 1.0, atol=1e-12)
      assert 0.5 / pi[1] > t_u - 1e-12
  # The switch happens exactly at s = 1: 1/(6λ) + 1/(4λ) = 1, λ = 5/12.
  assert np.exp(fr.frontier_policy(inst, 5 / 12 - 1e-6))[0, 2] == 0.0
  assert np.exp(fr.frontier_policy(inst, 5 / 12 + 1e-6))[0, 2] > 0.0


def test_off_support_ties_share_and_no_mass_when_not_better():
  inst = make_instance([1.0], [[0.5, 0.5, 0.0, 0.0]], [[0.0, 1.0, 3.0, 3.0]], 1.0)
  pi = np.exp(np.asarray(fr.frontier_policy(inst, 2.0)))[0]
  assert pi[2] == pytest.approx(pi[3]) and pi[2] > 0
  # Off-support response no better than the best on S: never gets mass.
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 1.0]], 1.0)
  for lam in (0.5, 5.0, 1e6):
    assert np.exp(fr.frontier_policy(inst, lam))[0, 2] == 0.0


def test_masked_responses_and_padding_match_unpadded():
  insts = [random_instance(s, n_x=2, n_y=3) for s in range(3)]
  padded = stack([pad(i, 4, 6) for i in insts])
  lams = jnp.asarray([0.0, 0.7, 3.0])
  batch_l, batch_j = jax.vmap(lambda i: fr.frontier_curve(i, lams))(padded)
  for k, inst in enumerate(insts):
    l_val, j_val = fr.frontier_curve(inst, lams)
    assert_close(batch_l[k], l_val, rtol=1e-11, atol=1e-12)
    assert_close(batch_j[k], j_val, rtol=1e-11, atol=1e-12)
    pol = fr.frontier_policy(padded_k := jax.tree.map(lambda a, k=k: a[k], padded), 2.0)
    assert np.all(np.exp(np.asarray(pol))[~np.asarray(padded_k.response_mask)] == 0.0)
  regrets = jax.vmap(lambda i: fr.decoupling_regret(i, obj.gibbs_tilt(i)))(padded)
  for k, inst in enumerate(insts):
    assert_close(regrets[k], fr.decoupling_regret(inst, obj.gibbs_tilt(inst)), rtol=1e-9,
                 atol=1e-10)


def test_curve_is_monotone():
  inst = random_instance(7, n_x=4, n_y=5)
  lams = np.geomspace(1e-3, 1e3, 40)
  l_val, j_val = map(np.asarray, fr.frontier_curve(inst, lams))
  assert np.all(np.diff(l_val) >= -1e-12) and np.all(np.diff(j_val) >= -1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_frontier_points_have_zero_regret(seed):
  inst = random_instance(seed, n_x=3, n_y=4)
  for lam in (0.0, 0.2, 1.0, 5.0):
    reg = fr.decoupling_regret(inst, fr.frontier_policy(inst, lam))
    assert abs(float(reg)) < 1e-9


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), temp=st.floats(0.05, 5.0))
def test_regret_nonnegative_and_below_excess(seed, temp):
  inst = random_instance(seed, n_x=3, n_y=4)
  rng = np.random.default_rng(seed)
  theta = jnp.asarray(rng.normal(size=(3, 4)) / temp)
  log_pi = jax.nn.log_softmax(theta, axis=-1)
  reg = float(fr.decoupling_regret(inst, log_pi))
  excess = float(obj.sft_excess(inst, log_pi))
  assert reg >= -1e-10
  assert reg <= excess + 1e-10
  if float(obj.reward(inst, log_pi)) <= float(obj.reward(inst, jnp.log(inst.data))):
    assert_close(reg, excess, rtol=1e-9, atol=1e-10)


def test_regret_against_scipy_for_rl_path():
  inst = random_instance(21, n_x=2, n_y=3, zeros=False)
  for beta in (0.3, 1.0):
    log_pi = fr.rl_path_policy(inst, beta)
    target = float(obj.reward(inst, log_pi))
    ref = float(obj.sft_loss(inst, log_pi)) - scipy_constrained(inst, target)
    assert_close(fr.decoupling_regret(inst, log_pi), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_rl_path_never_beats_frontier(seed):
  inst = random_instance(seed, n_x=3, n_y=5)
  betas = np.geomspace(0.05, 20.0, 12)
  reg = np.asarray(fr.rl_path_regret(inst, betas))
  assert np.all(reg >= -1e-10)
  assert np.max(reg) > 1e-4  # generically strictly inside the frontier
  # The path itself: π*_β(d) = d e^{r/β}/Z.
  log_pi = np.asarray(fr.rl_path(inst, betas[:1]))[0]
  d, r = np.asarray(inst.data), np.asarray(inst.reward)
  ref = d * np.exp(r / betas[0])
  ref /= ref.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.exp(log_pi), ref, rtol=1e-10, atol=1e-14)


@settings(max_examples=20)
@given(a=st.floats(0.01, 0.99), r0=st.floats(-3, 3), r1=st.floats(-3, 3))
def test_one_prompt_two_responses_rl_path_on_frontier(a, r0, r1):
  inst = make_instance([1.0], [[a, 1 - a]], [[r0, r1]], 1.0)
  reg = np.asarray(fr.rl_path_regret(inst, [0.01, 0.1, 1.0, 10.0, 1000.0]))
  np.testing.assert_allclose(reg, 0.0, atol=1e-9)


def test_rl_path_cannot_leave_support_but_frontier_can():
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 0.5, 1.0]], 1.0)
  log_pi = fr.rl_path_policy(inst, 0.1)
  assert np.exp(np.asarray(log_pi))[0, 2] == 0.0
  assert float(fr.decoupling_regret(inst, log_pi)) > 1e-3
  assert np.exp(np.asarray(fr.frontier_policy(inst, 10.0)))[0, 2] > 0


def test_rl_path_instance_uses_data_as_reference():
  inst = random_instance(2)
  other = dataclasses.replace(inst, reference=jnp.full(inst.shape, 0.25))
  assert_close(fr.rl_path_policy(other, 0.7), fr.rl_path_policy(inst, 0.7))


def test_large_lambda_and_small_beta_are_finite():
  inst = random_instance(5, n_x=2, n_y=4)
  l_val, j_val = fr.frontier_curve(inst, [1e-12, 1e6, 1e12])
  assert np.all(np.isfinite(np.asarray(l_val))) and np.all(np.isfinite(np.asarray(j_val)))
  reg = np.asarray(fr.rl_path_regret(inst, [1e-3, 1e3]))
  assert np.all(np.isfinite(reg)) and np.all(reg >= -1e-10)

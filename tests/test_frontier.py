"""The exact SFT-reward frontier, decoupling regret and the RL path (this project's D4).

Every value is checked against ``Reference`` below: THEORY.md D4 written out again in mpmath at
60 digits (ν per prompt by mpmath's root finder, the regret L(π) − L(π_λ*) in its primal form with
λ* by its own bisection), over the whole valid domain (β log-uniform in [1e-6, 1e6], |r|/β up to
1e6). Generic optimisers (scipy SLSQP) check the KKT derivation itself, through feasible points.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from conftest import TOL, assert_close
from helpers import instance_of
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize

from nondecoupling.theory import frontier as fr, objectives as obj
from nondecoupling.theory.instance import make_instance, stack, validate

DIGITS = 60
SHAPE = (3, 5)  # every instance is padded to this: one compile per function
RTOL, ATOL = TOL[np.dtype(np.float64)]


@pytest.fixture(autouse=True)
def mpmath_digits():
  """Every test here computes its mpmath references at DIGITS significant digits."""
  with mp.workdps(DIGITS):
    yield


def assert_at_most(a, b):
  """a ≤ b up to float64 rounding (the tolerance table's)."""
  a, b = float(a), float(b)
  assert a <= b + ATOL + RTOL * abs(b), (a, b)


# ----------------------------------------------------------------------------- mpmath reference

class Reference:
  """THEORY.md D4 in mpmath (60 digits) for one instance given as float arrays (unpadded)."""

  def __init__(self, w, d, r):
    self.w = [mp.mpf(float(v)) for v in np.asarray(w)]
    self.d = [[mp.mpf(float(v)) for v in row] for row in np.asarray(d)]
    self.r = [[mp.mpf(float(v)) for v in row] for row in np.asarray(r)]
    self.best = [max(row) for row in self.r]

  def row(self, x, lam):
    """π_λ(·|x): d/(ν − λ r) on S with ν from mp.findroot, or mass moved to the best off S."""
    d, r = self.d[x], self.r[x]
    s_idx = [y for y in range(len(d)) if d[y] > 0]
    off = [y for y in range(len(d)) if d[y] == 0]
    r_s = max(r[y] for y in s_idx)
    pi = [mp.mpf(0)] * len(d)
    if off and lam > 0 and max(r[y] for y in off) > r_s:
      r_u = max(r[y] for y in off)
      s = mp.fsum(d[y] / (lam * (r_u - r[y])) for y in s_idx)
      if s <= 1:
        ties = [y for y in off if r[y] == r_u]
        for y in s_idx:
          pi[y] = d[y] / (lam * (r_u - r[y]))
        for y in ties:
          pi[y] = (1 - s) / len(ties)
        return pi
    # ν = λ max_S r + t: solve for t (ν itself would cancel against λ max_S r at large λ).
    def f(t):
      return mp.fsum(d[y] / (t + lam * (r_s - r[y])) for y in s_idx) - 1
    lo = mp.fsum(d[y] for y in s_idx if r[y] == r_s)
    hi = mp.fsum(d[y] for y in s_idx)
    if lo == hi or f(lo) == 0:
      t = lo
    else:
      t = mp.findroot(f, (lo, hi), solver="anderson")
    for y in s_idx:
      pi[y] = d[y] / (t + lam * (r_s - r[y]))
    return pi

  def policy(self, lam):
    return [self.row(x, lam) for x in range(len(self.w))]

  def loss(self, pi):
    """L(π) = E_w Σ d log(1/π), π given as probabilities (mpf)."""
    return mp.fsum(w * mp.fsum(-d * mp.log(p) for d, p in zip(ds, ps) if d > 0)
                   for w, ds, ps in zip(self.w, self.d, pi))

  def reward(self, pi):
    return mp.fsum(w * mp.fsum(p * r for p, r in zip(ps, rs))
                   for w, ps, rs in zip(self.w, pi, self.r))

  def deficit(self, pi):
    """J_max − J(π) = E_w Σ π (max r − r)."""
    return mp.fsum(w * mp.fsum(p * (b - r) for p, r in zip(ps, rs))
                   for w, ps, rs, b in zip(self.w, pi, self.r, self.best))

  def min_loss_at_deficit(self, target):
    """(λ*, min{L(π) : Δ(π) ≤ target}) by bisection on log λ (bracket by doubling)."""
    deficit = lambda ell: self.deficit(self.policy(mp.exp(ell)))
    if self.deficit(self.policy(mp.mpf(0))) <= target:
      return mp.mpf(0), self.loss(self.policy(mp.mpf(0)))
    hi = mp.mpf(1)
    while deficit(hi) > target:
      hi *= 2
    lo = mp.mpf(-1)
    while deficit(lo) < target:
      lo *= 2
    while hi - lo > mp.mpf(10) ** -24 * max(1, abs(hi)):
      mid = (lo + hi) / 2
      if deficit(mid) > target:
        lo = mid
      else:
        hi = mid
    lam = mp.exp((lo + hi) / 2)
    return lam, self.loss(self.policy(lam))

  def regret(self, log_pi):
    """L(π) − min{L(π′) : J(π′) ≥ J(π)} for π given as float log-probabilities."""
    pi = [[mp.exp(mp.mpf(float(v))) if np.isfinite(v) else mp.mpf(0) for v in row]
          for row in np.asarray(log_pi)]
    if any(d > 0 and p == 0 for ds, ps in zip(self.d, pi) for d, p in zip(ds, ps)):
      return mp.inf
    loss = mp.fsum(w * mp.fsum(-d * mp.mpf(float(v)) for d, v in zip(ds, row) if d > 0)
                   for w, ds, row in zip(self.w, self.d, np.asarray(log_pi)))
    return loss - self.min_loss_at_deficit(self.deficit(pi))[1]

  def rl_path(self, beta):
    """log π*_β(d) = log d + r/β − log Σ d e^{r/β}."""
    beta = mp.mpf(float(beta))
    out = []
    for ds, rs in zip(self.d, self.r):
      log_z = mp.log(mp.fsum(d * mp.exp(r / beta) for d, r in zip(ds, rs) if d > 0))
      out.append([mp.log(d) + r / beta - log_z if d > 0 else -mp.inf for d, r in zip(ds, rs)])
    return out


def reference_of(inst):
  return Reference(inst.prompt_weights, inst.data, inst.reward)


def as_float(values):
  return np.array([[float(v) for v in row] for row in values])


# ----------------------------------------------------------------------------- instances

@st.composite
def domain_instances(draw, nonnegative_reward=False):
  """Instances over the valid domain: β log-uniform in [1e-6, 1e6], max |r|/β log-uniform in
  [1e-6, 1e6], zeros in d (so responses off supp d, sometimes better ones), reward ties."""
  n_x = draw(st.integers(1, SHAPE[0]))
  n_y = draw(st.integers(2, SHAPE[1]))
  beta = 10.0 ** draw(st.floats(-6, 6))
  scale = beta * 10.0 ** draw(st.floats(-6, 6))
  level = st.one_of(st.floats(-1, 1), st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]))
  u = np.array(draw(st.lists(st.lists(level, min_size=n_y, max_size=n_y), min_size=n_x,
                             max_size=n_x)))
  r = scale * (np.abs(u) if nonnegative_reward else u)
  mass = st.one_of(st.just(0.0), st.floats(1e-3, 1.0), st.floats(1e-12, 1e-3))
  d = np.array(draw(st.lists(st.lists(mass, min_size=n_y, max_size=n_y), min_size=n_x,
                             max_size=n_x)))
  d[d.sum(1) == 0, 0] = 1.0
  d /= d.sum(1, keepdims=True)
  w = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=n_x, max_size=n_x)))
  inst = make_instance(w / w.sum(), d, r, beta)
  validate(inst)
  return inst


def random_instance(seed: int, n_x: int = 2, n_y: int = 4, zeros: bool = True, beta=0.5):
  rng = np.random.default_rng(seed)
  d = rng.dirichlet(np.ones(n_y) * 0.8, n_x)
  if zeros:
    for x in range(n_x):
      idx = rng.choice(n_y, size=rng.integers(0, n_y - 1), replace=False)
      d[x, idx] = 0.0
      if d[x].sum() == 0:
        d[x, 0] = 1.0
      d[x] /= d[x].sum()
  r = rng.normal(size=(n_x, n_y))
  return make_instance(rng.dirichlet(np.ones(n_x)), d, r, beta)


def padded(inst):
  """``inst`` padded to SHAPE in numpy (weight-0 prompts, masked responses)."""
  raw = {k: np.asarray(getattr(inst, k)) for k in ("prompt_weights", "data", "reference",
                                                   "reward", "beta")}
  return instance_of(raw, bucket=SHAPE)


def rl_path_policy(inst, beta):
  return np.asarray(fr.rl_path_policy(padded(inst), beta))[: inst.shape[0], : inst.shape[1]]


def pad_policy(log_pi):
  """A policy of an unpadded instance, padded like ``padded`` (padded prompts: uniform)."""
  log_pi = np.asarray(log_pi)
  out = np.full(SHAPE, -np.inf)
  out[: log_pi.shape[0], : log_pi.shape[1]] = log_pi
  out[log_pi.shape[0]:, : log_pi.shape[1]] = -np.log(log_pi.shape[1])
  return jnp.asarray(out)


def regret(inst, log_pi, allowed=None):
  """decoupling_regret of an unpadded instance, evaluated padded (one compile for all)."""
  if allowed is None:
    return fr.decoupling_regret(padded(inst), pad_policy(log_pi))
  allowed = np.pad(np.asarray(allowed), [(0, SHAPE[0] - inst.shape[0]),
                                        (0, SHAPE[1] - inst.shape[1])], constant_values=True)
  return fr.decoupling_regret(padded(inst), pad_policy(log_pi), allowed)


def frontier_policy(inst, lam):
  return np.asarray(fr.frontier_policy(padded(inst), lam))[: inst.shape[0], : inst.shape[1]]


def rl_path_regret(inst, betas):
  """rl_path_regret at five β (one compile for all)."""
  return fr.rl_path_regret(padded(inst), np.asarray(betas, np.float64))


# ----------------------------------------------------------------------------- regret

@pytest.mark.parametrize("data,reward,expected", [
    ([[0.5, 0.5]], [[1.0, 0.0]], 0.0),
    ([[0.5, 0.3, 0.2]], [[1.0, 0.0, -1.0]], 199.606),
])
def test_regret_of_the_rl_path_at_small_beta(data, reward, expected):
  """The two instances of the report: `compare` said 211.33 and 411.19 (deficit underflow)."""
  inst = make_instance([1.0], data, reward, 1e-3)
  log_pi = rl_path_policy(inst, 1e-3)
  ref = reference_of(inst).regret(np.asarray(log_pi))
  assert round(float(ref), 3) == expected
  assert_close(regret(inst, log_pi), float(ref))


@settings(max_examples=30)
@given(inst=domain_instances(), temp=st.floats(-2, 6), kind=st.sampled_from(["rl", "random"]),
       seed=st.integers(0, 2**32 - 1))
def test_regret_matches_mpmath_over_the_domain(inst, temp, kind, seed):
  """RL-path policies π*_β(d) and random softmax policies (logits up to 1e6, mass off supp d)."""
  if kind == "rl":
    log_pi = np.asarray(rl_path_policy(inst, inst.beta))
  else:
    rng = np.random.default_rng(seed)
    log_pi = np.asarray(jax.nn.log_softmax(rng.normal(size=inst.shape) * 10.0 ** temp, axis=-1))
  assert_close(regret(inst, log_pi), float(reference_of(inst).regret(log_pi)))


@pytest.mark.parametrize("beta", [1e-6, 1e-3, 1.0, 1e3, 1e6])
def test_regret_at_the_corners_of_the_domain(beta):
  """|r|/β = 1e6 at β = 1e-6 (π*_β within e^{-1e6} of the best) and r = 1e12 at β = 1e6."""
  inst = make_instance([0.3, 0.7], [[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]],
                       np.array([[1.0, 0.5, -1.0, 0.9], [0.2, -0.7, 1.0, 0.4]]) * beta * 1e6,
                       beta)
  validate(inst)
  log_pi = np.asarray(rl_path_policy(inst, beta))
  ref = reference_of(inst)
  assert_close(regret(inst, log_pi), float(ref.regret(log_pi)))
  assert_close(np.where(np.isfinite(log_pi), log_pi, 0.0),
               np.where(np.isfinite(log_pi), as_float(ref.rl_path(beta)), 0.0))


@settings(max_examples=20)
@given(a=st.floats(0.01, 0.99), r0=st.floats(-1, 1), r1=st.floats(-1, 1))
def test_one_prompt_two_responses_rl_path_on_frontier(a, r0, r1):
  """THEORY.md D4: with one prompt and two responses π*_β(d) is on the frontier for every β."""
  inst = make_instance([1.0], [[a, 1 - a]], [[r0, r1]], 1.0)
  assert_close(rl_path_regret(inst, [1e-6, 1e-3, 1.0, 1e3, 1e6]), np.zeros(5))


def test_regret_with_tiny_data_mass_and_weight():
  """π/π_λ = e^718 at the root on a response with d = 1e-300 of a prompt with w = 1e-12."""
  inst = make_instance([1e-12, 1 - 1e-12], [[1 - 1e-300, 1e-300], [0.5, 0.5]],
                       [[1.0, 0.0], [1.0, 0.0]], 1.0)
  log_pi = np.array([[np.log(0.5), np.log(0.5)], [np.log1p(-1e-20), np.log(1e-20)]])
  assert_close(regret(inst, log_pi), float(reference_of(inst).regret(log_pi)))


def test_rl_path_is_strictly_inside_the_frontier():
  inst = random_instance(0, n_x=3, n_y=5)
  betas = np.geomspace(0.01, 20.0, 5)
  ref = reference_of(inst)
  expected = [float(ref.regret(np.asarray(rl_path_policy(inst, b)))) for b in betas]
  assert_close(rl_path_regret(inst, betas), expected)
  assert max(expected) > 1e-4  # generically strictly inside


def test_frontier_points_have_zero_regret():
  inst = random_instance(1, n_x=3, n_y=4)
  for lam in (0.0, 0.2, 1.0, 5.0, 1e8, 1e300):
    assert_close(regret(inst, frontier_policy(inst, lam)), 0.0)


def test_regret_is_nan_outside_the_comparison_class():
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 3.0]], 1.0)
  allowed = np.array([[True, True, False]])
  assert np.isnan(float(regret(inst, np.log([[0.4, 0.4, 0.2]]), allowed)))
  log_pi = np.array([[np.log(0.2), np.log(0.8), -np.inf]])
  ref = Reference([1.0], [[0.5, 0.5]], [[0.0, 1.0]]).regret(log_pi[:, :2])
  assert_close(regret(inst, log_pi, allowed), float(ref))


# ----------------------------------------------------------------------------- frontier points

@settings(max_examples=30)
@given(inst=domain_instances(nonnegative_reward=True), log10_lam=st.floats(-3, 300))
def test_frontier_points_match_mpmath(inst, log10_lam):
  """λ from 1e-3/max r up to 1e300 (λ δ overflows); rewards ≥ 0 so that J does not cancel.

  π_λ on supp d is well conditioned and must match to the table's tolerance. The mass moved off
  supp d, 1 − Σ_S d/(λ gap), is not where it starts (s → 1): L and J are checked as the exact
  values at some λ′ within the rounding of ℓ = log λ, the variable the solver works in (L and J
  increase with λ, so they must lie between the reference values at λ e^{∓4 ε (1 + |ℓ|)}).
  """
  lam = min(10.0 ** log10_lam / float(np.max(np.asarray(inst.reward)) + 1e-300), 1e300)
  ref = reference_of(inst)
  pi_ref = ref.policy(mp.mpf(lam))
  loss, rew = fr.frontier_point(padded(inst), lam)
  width = 4 * np.finfo(np.float64).eps * (1 + abs(np.log(lam)))
  for side, sign in (("below", -1), ("above", 1)):
    pi_side = ref.policy(mp.mpf(lam) * mp.exp(sign * mp.mpf(width)))
    bound_loss, bound_reward = float(ref.loss(pi_side)), float(ref.reward(pi_side))
    if side == "below":
      assert_at_most(bound_loss, loss)
      assert_at_most(bound_reward, rew)
    else:
      assert_at_most(loss, bound_loss)
      assert_at_most(rew, bound_reward)
  log_pi = frontier_policy(inst, lam)
  log_ref = np.array([[float(mp.log(p)) if p > 0 else -np.inf for p in row] for row in pi_ref])
  on_s = np.asarray(inst.data) > 0
  assert_close(log_pi[on_s], log_ref[on_s])  # log π_λ on supp d, to its relative precision
  assert_close(np.exp(log_pi), np.exp(log_ref))


def test_frontier_point_where_mass_starts_to_leave_the_support():
  """d = (1, 0), r = (0, 1e4), λ = 1e-4: s = 1/(λ r(u)) = 1 − 4.8e-17 (λ is not exactly 1e-4)."""
  inst = make_instance([1.0], [[1.0, 0.0]], [[0.0, 1e4]], 1.0)
  pi = np.exp(frontier_policy(inst, 1e-4))
  pi_ref = reference_of(inst).policy(mp.mpf(1e-4))
  assert_close(pi, as_float(pi_ref))
  assert float(pi_ref[0][1]) < 1e-16


@settings(max_examples=20)
@given(inst=domain_instances(), log_frac=st.one_of(st.floats(-30, 0), st.floats(-2e6, -30)))
def test_frontier_at_log_deficit_matches_mpmath(inst, log_frac):
  """Targets from Δ(d) (λ* = 0) down to e^{-2e6} Δ(d) (λ* ≈ e^{2e6}, beyond float range)."""
  ref = reference_of(inst)
  log_target = mp.log(ref.deficit(ref.policy(mp.mpf(0)))) + mp.mpf(log_frac)
  log_lam, loss = fr.frontier_at_log_deficit(padded(inst), float(log_target))
  target = mp.exp(mp.mpf(float(log_target)))
  assert_close(loss, float(ref.min_loss_at_deficit(target)[1]))
  # λ itself is ill-conditioned where Δ(π_λ) is flat; the deficit it reaches is not.
  lam = mp.exp(mp.mpf(float(log_lam))) if np.isfinite(float(log_lam)) else mp.mpf(0)
  assert_close(float(mp.log(ref.deficit(ref.policy(lam)))), float(mp.log(target)))


@pytest.mark.parametrize("frac", [0.0, 0.3, 0.9, 0.999999])
def test_frontier_at_reward_matches_mpmath(frac):
  inst = random_instance(3, n_x=3, n_y=4)
  ref = reference_of(inst)
  j_d = ref.reward(ref.policy(mp.mpf(0)))
  j_max = mp.fsum(w * b for w, b in zip(ref.w, ref.best))
  target = float(j_d + frac * (j_max - j_d))
  lam, loss = fr.frontier_at_reward(padded(inst), target)
  lam_ref, loss_ref = ref.min_loss_at_deficit(j_max - mp.mpf(target))
  assert_close(loss, float(loss_ref))
  assert_close(lam, float(lam_ref))
  assert_close(fr.frontier_point(padded(inst), lam)[1], target)


def test_frontier_at_log_deficit_beyond_float_range():
  """Δ* = e^{-1e6}: λ ≈ e^{1e6} is not a float, its log is."""
  inst = make_instance([1.0], [[0.5, 0.3, 0.2]], [[1.0, 0.0, -1.0]], 1.0)
  log_lam, loss = fr.frontier_at_log_deficit(padded(inst), -1e6)
  lam_ref, loss_ref = reference_of(inst).min_loss_at_deficit(mp.exp(-10 ** 6))
  assert_close(loss, float(loss_ref))
  assert_close(log_lam, float(mp.log(lam_ref)))


def test_frontier_at_reward_ends():
  inst = random_instance(2, n_x=2, n_y=3)
  lam, loss = fr.frontier_at_reward(padded(inst), float(obj.reward(inst, jnp.log(inst.data))) - 1)
  assert float(lam) == 0.0
  assert_close(loss, float(reference_of(inst).loss(reference_of(inst).d)))
  lam, loss = fr.frontier_at_reward(padded(inst), float(fr.max_reward(inst)) + 1.0)
  assert float(lam) == np.inf and float(loss) == np.inf


# ----------------------------------------------------------------------------- generic optimisers

def scipy_penalised(inst, lam):
  """argmin_π Σ_x w_x [-Σ d log π − λ Σ π r] over the product of simplices (SLSQP), projected
  onto the simplices (clip at 0, renormalise): a feasible point, whatever SLSQP stopped at."""
  d, r = np.asarray(inst.data), np.asarray(inst.reward)
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
      p = np.clip(res.x, 0.0, None)
      p /= p.sum()
      if best is None or f(p) < f(best):
        best = p
    out.append(best)
  return np.array(out)


def penalised_value(inst, lam, pi):
  lp = jnp.log(jnp.asarray(pi))
  return float(obj.sft_loss(inst, lp) - lam * obj.reward(inst, lp))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0, 7.0])
def test_frontier_policy_beats_every_feasible_scipy_point(seed, lam):
  inst = random_instance(seed)
  pi = np.exp(frontier_policy(inst, lam))
  assert_close(pi.sum(-1), 1.0)
  feasible = scipy_penalised(inst, lam)
  assert_at_most(penalised_value(inst, lam, pi), penalised_value(inst, lam, feasible))
  assert_close(pi, as_float(reference_of(inst).policy(mp.mpf(lam))))


def scipy_constrained(inst, target):
  """A feasible point of min L(π) s.t. J(π) ≥ target (SLSQP over the product of simplices,
  projected onto the simplices and then mixed with the best responses until J ≥ target)."""
  d, r, w = (np.asarray(a) for a in (inst.data, inst.reward, inst.prompt_weights))
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
  res = minimize(f, (0.5 * d + 0.5 / n_y).ravel(), jac=grad, bounds=bounds, constraints=cons,
                 method="SLSQP", options=dict(ftol=1e-13, maxiter=3000))
  p = np.clip(res.x.reshape(n_x, n_y), 0.0, None)
  p /= p.sum(-1, keepdims=True)
  best = np.eye(n_y)[np.argmax(r, -1)]
  j = lambda q: float(np.sum(w[:, None] * q * r))
  short = max(target - j(p), 0.0)
  mix = short / (j(best) - j(p)) if short > 0 else 0.0
  p = (1 - mix) * p + mix * best
  return p


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("frac", [0.2, 0.6, 0.9])
def test_min_sft_loss_below_every_feasible_scipy_point(seed, frac):
  inst = random_instance(seed + 10, n_x=2, n_y=3)
  j_d = float(obj.reward(inst, jnp.log(inst.data)))
  target = j_d + frac * (float(fr.max_reward(inst)) - j_d)
  lam, ours = fr.frontier_at_reward(padded(inst), target)
  feasible = scipy_constrained(inst, target)
  loss_feasible = float(obj.sft_loss(inst, jnp.log(jnp.asarray(feasible))))
  assert_at_most(ours, loss_feasible)
  ref = reference_of(inst)
  assert_close(ours, float(ref.min_loss_at_deficit(
      mp.fsum(w * b for w, b in zip(ref.w, ref.best)) - mp.mpf(target))[1]))
  # The λ found reaches the target with the same loss.
  l_lam, j_lam = fr.frontier_point(padded(inst), lam)
  assert_close(j_lam, target)
  assert_close(l_lam, ours)


# ----------------------------------------------------------------------------- structure

@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.0, 50.0), n_y=st.integers(2, SHAPE[1]))
def test_kkt_conditions(seed, lam, n_y):
  inst = random_instance(seed, n_x=3, n_y=n_y)
  pi = np.exp(frontier_policy(inst, lam))
  d, r = np.asarray(inst.data), np.asarray(inst.reward)
  assert_close(pi.sum(-1), 1.0)
  for x in range(d.shape[0]):
    s = d[x] > 0
    assert np.all(pi[x][s] > 0)
    # Stationarity on S: ν = d/π + λ r is the same for every y in S.
    nu = d[x][s] / pi[x][s] + lam * r[x][s]
    assert_close(nu, np.full_like(nu, nu[0]))
    # Dual feasibility off S: ν − λ r ≥ 0, with equality where π > 0 (complementary slackness).
    for y in np.flatnonzero(~s):
      assert_at_most(lam * r[x][y], nu[0])
      if pi[x][y] > 0:
        assert_close(lam * r[x][y], nu[0])


def test_off_support_case_exact():
  # S = {0, 1} with rewards 0 and 1; u = 2 has reward 3 and d(u) = 0.
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 3.0]], 1.0)
  for lam in (0.1, 0.3, 0.5, 1.0, 4.0):
    pi = np.exp(frontier_policy(inst, lam))[0]
    s = 0.5 / (lam * 3.0) + 0.5 / (lam * 2.0)
    if s <= 1.0:
      assert_close(pi, [0.5 / (lam * 3.0), 0.5 / (lam * 2.0), 1.0 - s])
    else:  # root on S: 0.5/(t + λ) + 0.5/t = 1
      t = (1 - lam + np.sqrt(1 + lam * lam)) / 2
      assert_close(pi, [0.5 / (t + lam), 0.5 / t, 0.0])
  # The switch happens exactly at s = 1: 1/(6λ) + 1/(4λ) = 1, λ = 5/12.
  assert np.exp(frontier_policy(inst, 5 / 12 - 1e-6))[0, 2] == 0.0
  assert np.exp(frontier_policy(inst, 5 / 12 + 1e-6))[0, 2] > 0.0


def test_off_support_ties_share_and_no_mass_when_not_better():
  inst = make_instance([1.0], [[0.5, 0.5, 0.0, 0.0]], [[0.0, 1.0, 3.0, 3.0]], 1.0)
  pi = np.exp(frontier_policy(inst, 2.0))[0]
  assert_close(pi[2], pi[3])
  assert pi[2] > 0
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 1.0, 1.0]], 1.0)
  for lam in (0.5, 5.0, 1e6, 1e300):
    assert np.exp(frontier_policy(inst, lam))[0, 2] == 0.0


def test_vmap_over_padded_instances_matches_one_at_a_time():
  insts = [random_instance(s, n_x=2, n_y=3, beta=b) for s, b in ((0, 1e-6), (1, 0.3), (2, 1e6))]
  batch = stack([padded(i) for i in insts])
  policies = jnp.stack([pad_policy(rl_path_policy(i, i.beta)) for i in insts])
  lams = jnp.asarray([0.0, 0.7, 3.0, 1e300, 1e-300])
  batch_l, batch_j = jax.vmap(lambda i: fr.frontier_curve(i, lams))(batch)
  regrets = jax.vmap(fr.decoupling_regret)(batch, policies)
  for k, inst in enumerate(insts):
    for j, lam in enumerate(lams):
      l_val, j_val = fr.frontier_point(padded(inst), lam)
      assert_close(batch_l[k, j], l_val)
      assert_close(batch_j[k, j], j_val)
    assert_close(regrets[k], regret(inst, rl_path_policy(inst, inst.beta)))


def test_padded_responses_get_no_mass():
  inst = padded(random_instance(4, n_x=2, n_y=3))
  for lam in (0.0, 2.0, 1e300):
    pol = np.exp(np.asarray(fr.frontier_policy(inst, lam)))
    assert np.all(pol[~np.asarray(inst.response_mask)] == 0.0)


def test_regret_compiles_once_per_shape():
  insts = [padded(random_instance(s, n_x=2, n_y=3, beta=b)) for s, b in ((0, 1e-6), (1, 1e6))]
  fr.decoupling_regret(insts[0], fr.rl_path_policy(insts[0], 0.5))
  before = fr.decoupling_regret._cache_size()
  for inst in insts:
    fr.decoupling_regret(inst, fr.rl_path_policy(inst, inst.beta))
  assert fr.decoupling_regret._cache_size() == before


def test_curve_is_monotone():
  inst = padded(random_instance(7, n_x=3, n_y=5))
  lams = np.geomspace(1e-3, 1e300, 60)
  l_val, j_val = (np.asarray(a) for a in fr.frontier_curve(inst, lams))
  for a, b in zip(l_val[:-1], l_val[1:]):
    assert_at_most(a, b)
  for a, b in zip(j_val[:-1], j_val[1:]):
    assert_at_most(a, b)


def test_rl_path_cannot_leave_support_but_frontier_can():
  inst = make_instance([1.0], [[0.5, 0.5, 0.0]], [[0.0, 0.5, 1.0]], 1.0)
  log_pi = np.asarray(rl_path_policy(inst, 0.1))
  assert np.exp(log_pi)[0, 2] == 0.0
  ours = float(regret(inst, log_pi))
  assert_close(ours, float(reference_of(inst).regret(log_pi)))
  assert ours > 1e-3
  assert np.exp(frontier_policy(inst, 10.0))[0, 2] > 0


def test_rl_path_instance_uses_data_as_reference():
  inst = random_instance(2)
  other = dataclasses.replace(inst, reference=jnp.full(inst.shape, 0.25))
  assert_close(rl_path_policy(other, 0.7), rl_path_policy(inst, 0.7))
  tilt = obj.gibbs_tilt(fr.rl_path_instance(padded(other), 0.7))
  assert_close(rl_path_policy(inst, 0.7), np.asarray(tilt)[: inst.shape[0], : inst.shape[1]])

"""THEORY.md part C: the paper's results as printed, the bounds beside them, and the repair."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import assert_close, assert_conditioned
from helpers import at_probe, instance_of, jitted, with_probe
from hypothesis import given, strategies as st
from hypothesis.errors import NoSuchExample
from mp_reference import Problem
from scipy import stats

from nondecoupling.theory.instance import rl_stage_after_sft
from nondecoupling.theory.objectives import c1, kl_rows, safe_log
from nondecoupling.theory.statements import rl_then_sft, sft_then_rl
from nondecoupling.theory.verdict import holds
from nondecoupling.verify.registry import statement_by_name
from nondecoupling.verify.search import _find_instance, search_counterexample
from nondecoupling.verify.statement import holds_mask
from nondecoupling.verify.strategies import instance_strategy


def _reference(raw) -> Problem:
  return Problem(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"], raw["beta"])


def _holds(v) -> bool:
  return bool(holds(v.margin, v.slack))


@given(instance_strategy())
def test_theorem_3_1_identity_and_jensen_gap(raw):
  """Theorem 3.1, C₁ ≥ 0 and C₁ = E KL(d‖π*) hold within their rounding bounds, and C₁ (ρ = d) is
  the mpmath value to the conditioned tolerance (a sum of non-negative terms: relative)."""
  inst = instance_of(raw)
  for fn in (sft_then_rl.theorem_3_1, sft_then_rl.c1_nonnegative, sft_then_rl.c1_is_kl):
    v = jitted(fn)(inst)
    assert _holds(v), (fn.__name__, v)
  ref = _reference(raw)
  value, scale = ref.quantities()["c1_sft_then_rl"]
  assert_conditioned(float(jitted(c1)(rl_stage_after_sft(inst))), value, scale,
                     resolution=ref.resolution())


_BOUNDS = {"C1 hoeffding_bound": sft_then_rl.c1_hoeffding_bound,
           "C1 sup_bound": sft_then_rl.c1_sup_bound,
           "C1 large_beta_limit": sft_then_rl.c1_large_beta_limit,
           "C1 small_beta_limit": sft_then_rl.c1_small_beta_limit}


@given(instance_strategy())
def test_c1_bounds_and_asymptote_remainders(raw):
  """Each bound holds, and its computed margin is within its slack of the exact (mpmath) margin."""
  inst = instance_of(raw)
  ref = _reference(raw)
  exact, res = ref.margins(), float(ref.margin_resolution())
  for name, fn in _BOUNDS.items():
    v = jitted(fn)(inst)
    assert _holds(v), (name, v)
    assert abs(float(v.margin) - float(exact[name])) <= float(v.slack) + res, (name, v)


constant_rewards = st.floats(-2, 2, allow_nan=False, width=64)


@given(instance_strategy(), constant_rewards)
def test_c1_zero_exactly_when_reward_constant_on_support(raw, level):
  """Equality case: making r constant on supp d (anything off it) gives C₁ = 0 within its slack."""
  raw = dict(raw)
  r = np.array(raw["reward"], dtype=float)
  r[np.asarray(raw["data"]) > 0] = level
  raw["reward"] = r
  v = jitted(sft_then_rl.c1_zero_when_constant)(instance_of(raw))
  assert bool(v.applies) and _holds(v), v
  assert abs(float(v.lhs)) <= float(v.slack)


@given(instance_strategy())
def test_c1_positive_when_reward_varies_on_support(raw):
  """Converse: wherever r is not exactly constant on some supp d_x (near ties included), the exact
  C₁ (mpmath) is positive and the computed one matches it to the conditioned tolerance; so it is
  positive too unless the exact value is below the smallest normal number."""
  inst = instance_of(raw)
  v = jitted(sft_then_rl.c1_positive_otherwise)(inst)
  d, r = np.asarray(raw["data"]), np.asarray(raw["reward"])
  varies = any(np.ptp(r[x][d[x] > 0]) > 0 for x in range(d.shape[0]))
  assert bool(v.applies) == varies
  ref = _reference(raw)
  value, scale = ref.quantities()["c1_sft_then_rl"]
  assert_conditioned(float(v.lhs), value, scale, resolution=ref.resolution())
  if varies:
    assert value > 0
    assert _holds(v), v
    if value > np.finfo(np.float64).tiny:
      assert float(v.lhs) > 0


def test_c1_asymptotic_rates():
  """β²C₁ → ½ E Var (slope −2 in log-log) and βC₁ → E[max − E_d r] (slope −1)."""
  raw = {"prompt_weights": np.array([0.3, 0.7]), "data": np.array([[0.2, 0.5, 0.3],
                                                                    [0.6, 0.4, 0.0]]),
         "reward": np.array([[1.0, -0.5, 0.2], [0.3, -1.0, 2.0]]), "beta": 1.0}
  betas = np.logspace(1.5, 3, 8)
  values = [float(c1(rl_stage_after_sft(instance_of(dict(raw, beta=b))))) for b in betas]
  slope = stats.linregress(np.log(betas), np.log(values)).slope
  assert abs(slope + 2) < 0.05
  d, r, w = raw["data"], raw["reward"], raw["prompt_weights"]
  var = w @ (np.sum(d * r ** 2, 1) - np.sum(d * r, 1) ** 2)
  assert_close(betas[-1] ** 2 * values[-1], 0.5 * var, rtol=1e-2)
  betas = np.logspace(-3, -1.5, 8)
  values = np.array([float(c1(rl_stage_after_sft(instance_of(dict(raw, beta=b))))) for b in betas])
  top = np.array([1.0, 0.3])
  limit = w @ (top - np.sum(d * r, 1))
  assert_close(betas[0] * values[0], limit, rtol=1e-2)
  slope = stats.linregress(np.log(betas), np.log(values)).slope
  assert abs(slope + 1) < 0.05


@given(with_probe())
def test_proposition_1_weak_and_sharp_for_any_pi2(example):
  raw, theta = example
  inst = instance_of(raw)
  for fn in (rl_then_sft.proposition_1, rl_then_sft.proposition_1_sharp):
    v = at_probe(fn, inst, theta)
    assert _holds(v), (fn.__name__, v)


@given(with_probe())
def test_repaired_theorem_4_1_and_criterion_for_any_pi2(example):
  raw, theta = example
  inst = instance_of(raw)
  for fn in (rl_then_sft.theorem_4_1_repaired, rl_then_sft.reward_drop_criterion):
    v = at_probe(fn, inst, theta)
    assert _holds(v), (fn.__name__, v)


def test_printed_theorem_4_1_counterexample_from_theory():
  """THEORY.md's counterexample (checked here, never used by verify): r ≡ 0, ρ = ½, π₂ = (¾, ¼)."""
  raw = {"prompt_weights": np.array([1.0]), "data": np.array([[0.75, 0.25]]),
         "reference": np.array([[0.5, 0.5]]), "reward": np.zeros((1, 2)), "beta": 1.0}
  inst = instance_of(raw, bucket=None)
  kl = float(kl_rows(safe_log(inst.data), safe_log(inst.reference))[0])
  assert_close(kl, 0.75 * np.log(1.5) + 0.25 * np.log(0.5))
  assert 0.1 <= kl <= 0.2
  v = rl_then_sft.theorem_4_1_as_printed(inst, band=(0.1, 0.2))
  assert bool(v.applies) and float(v.margin) <= 0


def test_hypothesis_finds_a_counterexample_to_printed_theorem_4_1_by_itself():
  """The search refutes Theorem 4.1 from a strategy that cannot produce the known example.

  Rewards are drawn from [0.5, 2] (never r ≡ 0) and data are dense (never one-hot): the
  counterexample must be discovered, not recalled.
  """
  stmt = statement_by_name("theorem_4_1_as_printed")
  strategy = instance_strategy(reward_values=st.floats(0.5, 2.0, allow_nan=False, width=64),
                               allow_sparse=False)
  found = search_counterexample(stmt, max_examples=300, seed=1, strategy=strategy)
  assert found is not None
  raw = found["instance"]
  assert np.all(np.asarray(raw["reward"]) >= 0.5)
  # Re-check independently in numpy: π₁ = Gibbs tilt of ρ, π₂ = d, KL in the band, no drop.
  from scipy.special import logsumexp, rel_entr
  d, ref, r, w, beta = (np.asarray(raw[k], float) for k in ("data", "reference", "reward",
                                                              "prompt_weights", "beta"))
  logits = np.log(ref) + r / beta
  pi1 = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
  kl = w @ rel_entr(d, pi1).sum(1)
  a, big_a = rl_then_sft.DEFAULT_BAND
  assert a <= kl <= big_a
  assert w @ (d * r).sum(1) >= w @ (pi1 * r).sum(1) - 1e-12
  assert not holds_mask(stmt, np.asarray(found["margin"]), np.asarray(found["slack"]))


def test_the_shared_search_finds_what_each_statements_own_search_finds():
  """The run's statements expected to hold share one Hypothesis search per kind of draw
  (verify/search.py): where it finds nothing, each one's own search (same strategy, settings and
  seed) finds nothing either; when one of them fails (an identity whose margin is lowered by 1)
  the shared search finds it and the statement is searched on its own, its counterexample
  found."""
  run = tuple(statement_by_name(n) for n in ("sft_loss_after_rl", "sft_excess_is_kl",
                                              "gibbs_variational", "theorem_4_1_as_printed"))
  for stmt in run[:2]:  # without and with a probe policy
    assert search_counterexample(stmt, max_examples=15, seed=5, together=run) is None
    with pytest.raises(NoSuchExample):
      _find_instance((stmt,), stmt.uses_probe, 15, 5)
  b3 = run[0]
  failing = dataclasses.replace(b3, fn=lambda inst, pi: b3.fn(inst, pi)._replace(
      margin=b3.fn(inst, pi).margin - 1.0))
  found = search_counterexample(failing, max_examples=15, seed=5, together=run + (failing,))
  assert found is not None and found["margin"] < -found["slack"], found


@given(instance_strategy())
def test_reward_drop_criterion_sides_against_numpy(raw):
  """C4's criterion at π₂ = d: both sides against an independent NumPy/SciPy derivation."""
  from scipy.special import logsumexp, rel_entr
  v = jitted(rl_then_sft.reward_drop_criterion)(instance_of(raw))
  d, ref, r, w, beta = (np.asarray(raw[k], float) for k in ("data", "reference", "reward",
                                                              "prompt_weights", "beta"))
  with np.errstate(divide="ignore"):
    logits = np.log(ref) + r / beta
  pi1 = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
  kl = lambda p, q: w @ rel_entr(p, q).sum(1)
  assert_close(float(v.lhs), w @ (pi1 * r).sum(1) - w @ (d * r).sum(1))
  assert_close(float(v.rhs), beta * (kl(d, pi1) - (kl(d, ref) - kl(pi1, ref))))

"""Right numbers everywhere in the valid domain: every `check` quantity and statement margin against
an mpmath reference at 60 digits (tests/mp_reference.py), on near ties (rewards equal up to a
relative 1e-8 on supp d) and at extreme β (1e-6 to 1e6, |r|/β up to 1e6), and every rounding
bound (Verdict.slack) really bounds the margin's error."""

from __future__ import annotations

import jax
import numpy as np
from conftest import assert_conditioned
from helpers import instance_of, jitted
from hypothesis import given, settings, strategies as st
from mp_reference import Problem

from nondecoupling.theory.instance import DOMAIN, make_instance
from nondecoupling.theory.objectives import c1, safe_log
from nondecoupling.theory.quantities import check_quantities
from nondecoupling.verify.margins import instance_margins
from nondecoupling.verify.registry import STATEMENTS
from nondecoupling.verify.statement import holds_mask

BUCKET = (3, 4)
_BY_NAME = {s.name: s for s in STATEMENTS}


@st.composite
def domain_instances(draw, near_tie: bool):
  """Small valid instances anywhere in the domain: β = 10^[−6, 6], |r|/β = 10^[−8, 6] at most;
  with ``near_tie`` the rewards on supp d_x (or the whole row) are equal up to 10^[−12, −8]."""
  nx, ny = draw(st.integers(1, BUCKET[0])), draw(st.integers(2, BUCKET[1]))
  mass = st.floats(0.05, 1.0, width=64)
  grid = lambda: np.array(draw(st.lists(st.lists(mass, min_size=ny, max_size=ny), min_size=nx,
                                        max_size=nx)))
  w = np.array(draw(st.lists(mass, min_size=nx, max_size=nx)))
  d = grid()
  keep = np.array(draw(st.lists(st.lists(st.booleans(), min_size=ny, max_size=ny), min_size=nx,
                                max_size=nx)))
  keep[np.arange(nx), np.argmax(d, axis=1)] = True
  d = d * keep
  ref = d if draw(st.booleans()) else grid()
  beta = 10.0 ** draw(st.floats(np.log10(DOMAIN.beta_min), np.log10(DOMAIN.beta_max)))
  scale = beta * 10.0 ** draw(st.floats(-8.0, np.log10(DOMAIN.reward_over_beta_max)))
  unit = st.floats(-1.0, 1.0, width=64)
  r = scale * np.array(draw(st.lists(st.lists(unit, min_size=ny, max_size=ny), min_size=nx,
                                     max_size=nx)))
  if near_tie:
    level = scale * np.array(draw(st.lists(unit, min_size=nx, max_size=nx)))[:, None]
    rel = 10.0 ** draw(st.floats(-12.0, -8.0))
    tie = level * (1.0 + rel * np.array(draw(st.lists(st.lists(unit, min_size=ny, max_size=ny),
                                                      min_size=nx, max_size=nx))))
    r = np.where((d > 0) | draw(st.booleans()), tie, r)
  # XLA on CPU flushes subnormal numbers to zero: such entries are computed as 0.
  r = np.where(np.abs(r) < np.finfo(np.float64).tiny, 0.0, r)
  norm = lambda a: a / a.sum(axis=-1, keepdims=True)
  return {"prompt_weights": w / w.sum(), "data": norm(d), "reference": norm(ref), "reward": r,
          "beta": float(beta)}


def _reference(raw) -> Problem:
  return Problem(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"], raw["beta"])


def _check_quantities(raw):
  q = jitted(check_quantities)(instance_of(raw, BUCKET))
  ref = _reference(raw)
  for name, (value, scale) in ref.quantities().items():
    got = float(q[name])
    if name == "beta_critical" and value is None:
      assert np.isnan(got), (name, got)
      continue
    assert_conditioned(got, value, scale, err_msg=name, resolution=ref.resolution())


@given(domain_instances(near_tie=True))
def test_check_quantities_on_near_ties_match_mpmath(raw):
  _check_quantities(raw)


@given(domain_instances(near_tie=False))
def test_check_quantities_anywhere_in_the_domain_match_mpmath(raw):
  _check_quantities(raw)


def _check_margins(raw):
  """Every statement at π = d (as `check`): the exact margin lies within the computed slack of the
  computed margin, and every true statement that applies holds."""
  margins = instance_margins(instance_of(raw, BUCKET))
  ref = _reference(raw)
  exact, resolution = ref.margins(), float(ref.margin_resolution())
  for name, m in margins.items():
    stmt = _BY_NAME[name]
    assert np.isfinite(m["margin"]) and np.isfinite(m["slack"]) and m["slack"] >= 0, (name, m)
    if name in exact:
      want = float(exact[name])
    elif stmt.kind == "identity":
      want = 0.0  # an exact identity: its residual is all rounding
    else:
      continue
    if name == "C1 c1_zero_iff_constant":
      want = -abs(float(exact["C1 c1_nonnegative"])) / max(1.0, abs(float(exact["C1 c1_nonnegative"])))
    if name.startswith("D1 critical_beta") and not m["applies"]:
      continue
    assert abs(m["margin"] - want) <= m["slack"] + resolution, (name, m["margin"], want, m["slack"])
    if m["applies"] and stmt.expected == "holds":
      assert m["holds"], (name, m)


@given(domain_instances(near_tie=True))
def test_statement_margins_on_near_ties_within_their_slack(raw):
  _check_margins(raw)


@settings(max_examples=40)
@given(domain_instances(near_tie=False))
def test_statement_margins_anywhere_in_the_domain_within_their_slack(raw):
  _check_margins(raw)


def test_c1_near_tie_regression():
  """β = 1, d = (½, ½), r = (0.3, 0.30000001): C₁ = log cosh(Δ/2) ≈ 1.25e-17, not 0 (it was 0)."""
  raw = {"prompt_weights": np.ones(1), "data": np.full((1, 2), 0.5),
         "reference": np.full((1, 2), 0.5), "reward": np.array([[0.3, 0.30000001]]), "beta": 1.0}
  inst = instance_of(raw, BUCKET)
  value, scale = _reference(raw).quantities()["c1_sft_then_rl"]
  got = float(jitted(c1)(inst))
  assert_conditioned(got, value, scale)
  assert 1.2e-17 < got < 1.3e-17
  margins = instance_margins(inst)
  assert margins["C1 c1_positive_otherwise"]["holds"]
  assert margins["D3 joint_bound"]["holds"]  # its margin was −5e-9 from a cancelled ΔJ_β


def test_slack_is_zero_only_when_every_term_is_exactly_zero():
  """r ≡ 0: the printed Theorem 4.1's margin is exactly 0 with slack 0, a refutation; a reward
  that moves gets a positive slack."""
  inst = make_instance([1.0], [[0.75, 0.25]], [[0.0, 0.0]], 1.0, reference=[[0.5, 0.5]])
  v = jax.jit(_BY_NAME["C3 theorem_4_1_as_printed"].fn)(inst, safe_log(inst.data))
  assert float(v.margin) == 0.0 and float(v.slack) == 0.0
  assert not holds_mask(_BY_NAME["C3 theorem_4_1_as_printed"], v.margin, v.slack)
  moved = make_instance([1.0], [[0.75, 0.25]], [[0.0, 1e-3]], 1.0, reference=[[0.5, 0.5]])
  assert float(jax.jit(_BY_NAME["C3 theorem_4_1_as_printed"].fn)(moved, safe_log(moved.data)).slack) > 0


def test_critical_beta_is_not_given_where_newton_cannot_certify_it():
  """Regression (found by the near-tie search in a fresh clone): rewards 1 and 1 + 1e-9 on supp d
  put β_c near 5e-10, where Newton stopped with h' < 0 and C₁(β̂_c) = 3.3e-11 (0.07 in h). An
  uncertified root is now NaN (no β_c) rather than a wrong number; every margin is checked."""
  raw = {"prompt_weights": np.array([1.0]), "data": np.array([[0.5, 0.0, 0.5]]),
         "reference": np.full((1, 3), 1.0 / 3.0), "reward": np.array([[1.0, 0.0, 1.000000001]]),
         "beta": 1.0}
  _check_margins(raw)
  assert not instance_margins(instance_of(raw, BUCKET))["D1 critical_beta_root"]["applies"]

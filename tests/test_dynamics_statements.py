"""This project's dynamics statements D2, D5-D7 (theory/statements) and their registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import TOL_NUMERICAL, assert_close
from hypothesis import given, settings, strategies as st

from nondecoupling.theory import flows, objectives as obj
from nondecoupling.theory.instance import make_instance, pad_instance
from nondecoupling.theory.statements import initial_rates, pl, rl_duration, spectral
from nondecoupling.theory.verdict import holds, rounding_slack
from nondecoupling.verify import checking, families, flow_checks as ds, strategies
from nondecoupling.verify.numpy_reference import (
  reference_gradients,
  reference_optimal_duration,
  reference_pl,
  reference_rl_flow,
)
from nondecoupling.verify.registry import FLOW_STATEMENTS
from nondecoupling.verify.statement import failure_mask

BUCKET = (3, 4)


def _padded(raw):
  inst = make_instance(raw["prompt_weights"], raw["data"], raw["reward"], raw["beta"],
                       reference=raw["reference"])
  return pad_instance(inst, *BUCKET)


def _instance(seed, beta=0.7, same_ref=False):
  rng = np.random.default_rng(seed)
  d = rng.uniform(0.2, 1, BUCKET)
  d /= d.sum(1, keepdims=True)
  ref = rng.uniform(0.2, 1, BUCKET)
  ref /= ref.sum(1, keepdims=True)
  w = rng.uniform(0.5, 1, BUCKET[0])
  return make_instance(w / w.sum(), d, rng.uniform(-1, 1, BUCKET), beta,
                       reference=d if same_ref else ref)


_d2 = jax.jit(initial_rates.d2_check)
_pl = jax.jit(lambda inst, th: (pl.pl_rl(inst, obj.policy_log_probs(inst, th)),
                                pl.pl_sft(inst, obj.policy_log_probs(inst, th))))
_spec = jax.jit(lambda inst, th: spectral.spectral_misalignment(inst, obj.policy_log_probs(inst, th)))
_logits = st.lists(st.floats(-4, 4, allow_nan=False, width=64), min_size=12, max_size=12).map(
    lambda v: jnp.asarray(np.reshape(v, BUCKET)))


@settings(max_examples=8)
@given(strategies.instance_strategy(max_prompts=3, max_responses=4, beta_range=(0.05, 20.0)))
def test_d2_closed_forms_match_flow_finite_differences(raw):
  res = _d2(_padded(raw))
  assert float(res["margin"]) >= 0, {k: float(v) for k, v in res.items()}


def test_d2_curvature_forms_agree_and_slope_vanishes_at_data():
  inst = _instance(0, same_ref=True)
  assert float(initial_rates.initial_slope(inst)) == 0.0  # ρ − d vanishes exactly at ρ = d
  assert_close(initial_rates.initial_curvature_general(inst), initial_rates.initial_curvature(inst))
  assert float(initial_rates.initial_curvature(inst)) > 0
  # An independent measurement: second derivative of L along the integrated flow by a fit.
  ts = jnp.linspace(0.02, 0.2, 10)
  th, ok = flows.rl_flow(inst, ts, rtol=1e-12, atol=1e-14)
  loss = np.asarray(jax.vmap(lambda t: obj.sft_excess(inst, obj.policy_log_probs(inst, t)))(th))
  coef = np.polyfit(np.asarray(ts), loss, 4)
  assert_close(2 * coef[-3], initial_rates.initial_curvature(inst), rtol=1e-4)


@given(strategies.instance_strategy(max_prompts=3, max_responses=4), _logits)
def test_d5_pl_inequalities_at_random_policies(raw, theta):
  """Both PL inequalities hold within their slack, their sides agree with an independent NumPy
  derivation, and the inequalities hold in that derivation too."""
  inst = _padded(raw)
  rl, sft = _pl(inst, theta)
  assert bool(holds(rl["margin"], rl["slack"])) and bool(holds(sft["margin"], sft["slack"]))
  nx, ny = np.asarray(raw["data"]).shape
  ref = reference_pl(raw["prompt_weights"], raw["data"], raw["reference"], raw["reward"],
                     raw["beta"], np.asarray(theta)[:nx, :ny])
  for got, want in ((rl["lhs"], ref["rl_lhs"]), (rl["rhs"], ref["rl_rhs"]),
                    (sft["lhs"], ref["sft_lhs"]), (sft["rhs"], ref["sft_rhs"])):
    assert_close(float(got), want)
  assert ref["rl_lhs"] >= ref["rl_rhs"] and ref["sft_lhs"] >= ref["sft_rhs"]


def test_d5_decay_bound_on_trajectories():
  for seed, kind in ((1, "rl"), (2, "sft"), (3, "rl")):
    inst = _instance(seed, beta=0.3 + seed)
    theta0 = 2.0 * jax.random.normal(jax.random.PRNGKey(seed), BUCKET)
    ts = jnp.linspace(2.0, 60.0, 30)
    res = pl.pl_decay(inst, ts, theta0, kind=kind)
    assert bool(res["ok"])
    assert np.all(np.asarray(res["log_margin"]) >= 0)
    gap = np.asarray(res["gap"])
    assert gap[-1] < 0.5 * float(res["gap0"])          # the flow really moved
    # Gaps fall along their own flow (up to their rounding bound).
    slack = np.asarray(jax.vmap(lambda s: rounding_slack(s, 12))(res["gap_scale"]))
    assert np.all(np.diff(gap) <= slack[1:] + slack[:-1])
    # The integral of μ agrees with a quadrature of μ at the saved policies.
    mu = pl.mu_rl if kind == "rl" else pl.mu_sft
    fine = jnp.linspace(1e-3, 60.0, 600)
    th, _ = flows.flow(inst, fine, float(kind == "sft"), float(kind == "rl"), theta0)
    mus = np.asarray(jax.vmap(lambda t: mu(inst, obj.policy_log_probs(inst, t)))(th))
    integ = np.trapezoid(mus, np.asarray(fine)) + 1e-3 * float(mu(inst, obj.policy_log_probs(
        inst, theta0)))
    assert_close(res["mu_integral"][-1], integ, rtol=1e-3)  # trapezoid rule on 600 points


@given(strategies.instance_strategy(max_prompts=3, max_responses=4), _logits)
def test_d6_spectral_bound_at_random_policies(raw, theta):
  """The bound holds within its slack, and the inner products and λ_max(F) ≤ max π agree with an
  independent NumPy derivation."""
  inst = _padded(raw)
  res = _spec(inst, theta)
  assert bool(holds(res["margin_min"], res["slack_min"])), res
  nx, ny = np.asarray(raw["data"]).shape
  th = np.asarray(theta)[:nx, :ny]
  g_l, g_j = reference_gradients(raw["prompt_weights"], raw["data"], raw["reference"],
                                 raw["reward"], raw["beta"], th)
  assert_close(np.asarray(res["inner"])[:nx], np.sum(g_l * g_j, -1))
  support = np.asarray(raw["reference"]) > 0
  for x in range(nx):
    z = np.where(support[x], th[x], -np.inf)
    pi = np.exp(z - np.max(z))
    pi /= pi.sum()
    lam = np.linalg.eigvalsh(np.diag(pi) - np.outer(pi, pi))[-1]
    # A backward-stable eigensolver errs by at most |Y| ε ‖F‖ ≤ |Y| ε max π.
    assert lam <= np.max(pi) * (1.0 + ny * np.finfo(np.float64).eps)


def test_d6_bound_is_tight_with_two_responses():
  rng = np.random.default_rng(5)
  d = rng.dirichlet([2, 2], 3)
  inst = make_instance(np.ones(3) / 3, d, rng.uniform(-1, 1, (3, 2)), 0.9,
                       reference=rng.dirichlet([2, 2], 3))
  log_pi = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 2))))
  res = spectral.spectral_misalignment(inst, log_pi)
  assert_close(res["tightness"], np.ones(3))


def test_d7_optimal_duration_against_scipy():
  """t*(λ) against an independent derivation: the flow integrated by scipy (DOP853) and the root of
  dJ/dt − λ dL/dt found by brentq (verify.numpy_reference); and the PL time meets its guarantee."""
  inst = _instance(7, beta=0.5)
  lam = 0.4
  res = rl_duration.optimal_rl_duration(inst, lam, 400.0, 0.1)
  assert bool(res["ok"]) and bool(res["interior"])
  want = reference_optimal_duration(np.asarray(inst.prompt_weights), np.asarray(inst.data),
                                    np.asarray(inst.reward), 0.5, lam, 400.0)
  assert_close(float(res["t_star"]), want, *TOL_NUMERICAL)
  assert float(res["t_star"]) < float(res["t_eps"])  # here t_ε ≈ 8e3 lies beyond the horizon
  # The PL time on a faster instance (β = 5: t_ε ≈ 94 inside the horizon): the integrated gap at
  # t_ε against an independent scipy integration, and the guarantee gap(t_ε) ≤ ε gap(0).
  fast = _instance(7, beta=5.0)
  res = rl_duration.optimal_rl_duration(fast, lam, 400.0, 0.1)
  assert bool(res["ok"]) and bool(res["t_eps_in_horizon"])
  w, d, r = (np.asarray(a) for a in (fast.prompt_weights, fast.data, fast.reward))
  sol = reference_rl_flow(w, d, d, r, 5.0, np.log(d), [float(res["t_eps"])])
  from scipy.special import rel_entr, softmax
  pi = softmax(sol.y[:, -1].reshape(d.shape), axis=-1)
  star = softmax(np.log(d) + r / 5.0, axis=-1)
  gap = 5.0 * float(w @ rel_entr(pi, star).sum(-1))
  assert_close(float(res["gap_at_t_eps"]), gap, *TOL_NUMERICAL)
  assert gap <= 0.1 * float(res["gap0"])


def test_d7_t_star_falls_as_lambda_grows():
  inst = _instance(8, beta=0.5)
  ts = [float(rl_duration.optimal_rl_duration(inst, lam, 400.0)["t_star"]) for lam in (0.2, 0.4, 0.8)]
  assert ts[0] > ts[1] > ts[2] > 0


def test_registry_statements_run_on_small_batches():
  names = [s.name for s in FLOW_STATEMENTS]
  assert len(set(names)) == len(names)
  assert all(s.source == "ours" and s.expected == "holds" for s in FLOW_STATEMENTS)
  assert {n.split()[0] for n in names} == {"D2", "D5", "D6", "D7"}
  inst, _ = families.sample_family("dense", 40, 0)
  key = jax.random.PRNGKey(0)
  for name in ("D5 pl_rl", "D5 pl_sft", "D6 spectral_misalignment", "D5 pl_decay_rl"):
    stmt = next(s for s in FLOW_STATEMENTS if s.name == name)
    v = stmt.check(inst, key)
    m, a = np.asarray(v.margin), np.asarray(v.applies)
    assert m.shape == (40,) and a.any()
    assert not np.any(failure_mask(stmt, m, np.asarray(v.slack))[a]), name
  # Flow statements run on the first FLOW_SAMPLE instances only.
  v = next(s for s in FLOW_STATEMENTS if s.name == "D5 pl_decay_rl").check(inst, key)
  assert not np.asarray(v.applies)[ds.FLOW_SAMPLE:].any()


def test_verify_evaluates_every_family_batch_of_a_flow_statement_at_one_shape():
  """`verify` pads each family's batch of a flow statement to the run's largest (one program,
  not one per batch size); every instance keeps its own random policy (the keys are split per
  row), so the margins are those of each batch checked alone, and the padding is not counted."""
  batches = families.sample_all(16, 0)  # 16 over 7 families: batches of 3, 3, 2, 2, 2, 2, 2
  sizes = [int(inst.prompt_weights.shape[0]) for _, inst, _ in batches]
  assert max(sizes) == 3 and min(sizes) == 2
  inst = batches[-1][1]
  assert checking._padded(inst, 3) is checking._padded(inst, 3)  # D7's two statements share it
  for stmt in (s for s in FLOW_STATEMENTS if s.name in ("D5 pl_rl", "D6 spectral_misalignment")):
    alone = [stmt.check(inst, jax.random.PRNGKey(3)) for _, inst, _ in batches]
    for (_, inst, _), v in zip(batches, alone):
      n = int(inst.prompt_weights.shape[0])
      padded = stmt.check(checking._padded(inst, 3), jax.random.PRNGKey(3))
      assert_close(np.asarray(padded.margin)[:n], np.asarray(v.margin))
    m = np.concatenate([np.asarray(v.margin) for v in alone])
    a = np.concatenate([np.broadcast_to(np.asarray(v.applies), np.shape(v.margin))
                        for v in alone])
    report = checking.check_statement(stmt, batches, 0, 3)
    assert report.checked == sum(sizes) and report.instances == int(a.sum())
    assert_close(report.worst_margin, float(np.min(m[a])))

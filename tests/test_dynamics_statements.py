"""This project's dynamics statements D2, D5-D7 (theory/ours_dynamics.py) and their registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_close
from hypothesis import given, settings, strategies as st

from nondecoupling.theory import flows, objectives as obj
from nondecoupling.theory.instance import make_instance, pad_instance, rl_stage_after_sft
from nondecoupling.theory.statements import initial_rates, pl, rl_duration, spectral
from nondecoupling.verify import families, flow_checks as ds, strategies
from nondecoupling.verify.registry import FLOW_STATEMENTS

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
  assert_close(initial_rates.initial_slope(inst), 0.0, atol=1e-15)
  assert_close(initial_rates.initial_curvature_general(inst), initial_rates.initial_curvature(inst), rtol=1e-10)
  assert float(initial_rates.initial_curvature(inst)) > 0
  # An independent measurement: second derivative of L along the integrated flow by a fit.
  ts = jnp.linspace(0.02, 0.2, 10)
  th, ok = flows.rl_flow(inst, ts, rtol=1e-12, atol=1e-14)
  loss = np.asarray(jax.vmap(lambda t: obj.sft_excess(inst, obj.policy_log_probs(inst, t)))(th))
  coef = np.polyfit(np.asarray(ts), loss, 4)
  assert_close(2 * coef[-3], initial_rates.initial_curvature(inst), rtol=1e-4)


@given(strategies.instance_strategy(max_prompts=3, max_responses=4), _logits)
def test_d5_pl_inequalities_at_random_policies(raw, theta):
  rl, sft = _pl(_padded(raw), theta)
  assert float(rl["margin"]) >= 0 and float(sft["margin"]) >= 0
  assert float(rl["lhs"]) >= float(rl["rhs"]) * (1 - 1e-12)
  assert float(sft["lhs"]) >= float(sft["rhs"]) * (1 - 1e-12)


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
    assert np.all(np.diff(gap) <= 1e-14)               # gaps fall along their own flow
    # The integral of μ agrees with a quadrature of μ at the saved policies.
    mu = pl.mu_rl if kind == "rl" else pl.mu_sft
    fine = jnp.linspace(1e-3, 60.0, 600)
    th, _ = flows.flow(inst, fine, float(kind == "sft"), float(kind == "rl"), theta0)
    mus = np.asarray(jax.vmap(lambda t: mu(inst, obj.policy_log_probs(inst, t)))(th))
    integ = np.trapezoid(mus, np.asarray(fine)) + 1e-3 * float(mu(inst, obj.policy_log_probs(
        inst, theta0)))
    assert_close(res["mu_integral"][-1], integ, rtol=1e-3)


@given(strategies.instance_strategy(max_prompts=3, max_responses=4), _logits)
def test_d6_spectral_bound_at_random_policies(raw, theta):
  res = _spec(_padded(raw), theta)
  assert float(res["margin_min"]) >= -1e-10
  assert np.all(np.asarray(res["bound"]) <= np.asarray(res["bound_relaxed"]) * (1 + 1e-12))


def test_d6_bound_is_tight_with_two_responses():
  rng = np.random.default_rng(5)
  d = rng.dirichlet([2, 2], 3)
  inst = make_instance(np.ones(3) / 3, d, rng.uniform(-1, 1, (3, 2)), 0.9,
                       reference=rng.dirichlet([2, 2], 3))
  log_pi = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 2))))
  res = spectral.spectral_misalignment(inst, log_pi)
  assert_close(res["tightness"], np.ones(3), rtol=1e-9)


def test_d7_root_condition_and_argmax_on_fine_grid():
  inst = _instance(7, beta=0.5)
  lam = 0.4
  res = rl_duration.optimal_rl_duration(inst, lam, 400.0, 0.1)
  assert bool(res["ok"]) and bool(res["interior"])
  t_star = float(res["t_star"])
  scale = abs(float(res["grid_rate"][0]))
  assert abs(float(res["rate_star"])) <= 1e-6 * scale
  fine = jnp.linspace(0.02 * t_star, 3 * t_star, 1201)
  inst_d = rl_stage_after_sft(inst)
  th, ok = flows.rl_flow(inst_d, fine, flows.initial_logits(inst_d), rtol=1e-11, atol=1e-13)
  value = lambda lp: obj.reward(inst_d, lp) - lam * obj.sft_loss(inst_d, lp)
  vals = np.asarray(jax.vmap(lambda t: value(obj.policy_log_probs(inst_d, t)))(th))
  assert bool(ok)
  assert float(res["objective_star"]) >= vals.max() - 1e-10
  assert abs(float(fine[np.argmax(vals)]) - t_star) <= 2 * float(fine[1] - fine[0])
  # PL time: the integrated gap meets the guarantee, and t* comes long before t_ε here.
  assert bool(res["t_eps_in_horizon"]) or float(res["t_eps"]) > 0
  assert float(res["pl_margin"]) >= 0
  assert t_star < float(res["t_eps"])


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
    assert np.all(m[a] >= -stmt.tolerance), name
  # Flow statements run on the first FLOW_SAMPLE instances only.
  v = next(s for s in FLOW_STATEMENTS if s.name == "D5 pl_decay_rl").check(inst, key)
  assert not np.asarray(v.applies)[ds.FLOW_SAMPLE:].any()

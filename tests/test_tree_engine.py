"""THEORY.md part G: the level-by-level tree engine against brute-force enumeration of sequences.

Every example is a small tree file drawn by Hypothesis (every reward rule, both reference forms,
probabilities down to 1e-6), padded to one bucket so each engine function compiles once, and
compared with :mod:`tree_reference`, which enumerates every response (and, for gradients, every
position of every response) in NumPy from the file object itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tree_reference as ref
from conftest import TOL_NUMERICAL, assert_close
from hypothesis import given, strategies as st

from nondecoupling.theory.tree import bellman, fixed_points, kl, objectives as obj, policy, sft
from nondecoupling.theory.tree.instance import Bucket
from nondecoupling.verify.tree_families import SMALL_BUCKET, random_trees
from nondecoupling.verify.tree_io import tree_from_dict
from nondecoupling.verify.tree_strategies import tree_strategy


def _engine(tree, theta):
  """Every engine number on one tree at the policy softmax(θ) (one compile per bucket)."""
  lp = policy.policy_log_probs(tree, theta)
  out = {
      "leaf": policy.leaf_log_probs(tree, lp),
      "L": obj.sft_loss(tree, lp), "J": obj.reward(tree, lp), "KL": obj.kl(tree, lp),
      "J_beta": obj.regularized_reward(tree, lp), "excess": obj.sft_excess(tree, lp),
      "token_sum": sft.token_sum_loss(tree, lp), "token_mean": sft.token_mean_loss(tree, lp),
      "log_z": bellman.log_partition(tree), "c1": bellman.c1(tree),
      "star": policy.leaf_log_probs(tree, bellman.optimal_policy(tree)),
      "mean": policy.leaf_log_probs(tree, sft.token_mean_optimum(tree)),
      "mean_excess": sft.token_mean_excess(tree),
      "mean_excess_closed": sft.token_mean_excess_closed_form(tree),
      "grad_L": obj.sft_grad(tree, lp), "grad_J": obj.reward_grad(tree, lp),
      "grad_KL": obj.kl_grad(tree, lp), "grad_J_beta": obj.rl_grad(tree, lp),
      "grad_mean": sft.token_mean_grad(tree, lp),
      "reward_kl": kl.reward_kl_field(tree, lp), "later": kl.later_reach_terms(tree, lp),
      "k2_closed": kl.k2_loss_field(tree, lp), "k3_closed": kl.k3_loss_field(tree, lp),
  }
  for est in kl.ESTIMATORS:
    out[f"value_{est}"] = kl.expected_token_sum(tree, lp, est)
    out[f"field_{est}"] = kl.loss_kl_field(tree, lp, est)
  for c in ("k2_loss", "k3_loss"):
    out[f"fixed_{c}"] = fixed_points.closed_form_fixed_point(tree, c)
  return out


ENGINE = jax.jit(_engine)


@st.composite
def examples(draw, **kw):
  """(raw tree file, per-prompt logit rows keyed by prefix) with logits N(0, 2²)-like floats."""
  raw = draw(tree_strategy(**kw))
  logits = []
  for p in ref.prompts_of(raw):
    rows = {s: np.array(draw(st.lists(st.floats(-4.0, 4.0, width=64), min_size=p.k,
                                      max_size=p.k))) for s in p.support}
    logits.append(rows)
  return raw, logits


def _setup(raw, logits):
  tf = tree_from_dict(raw, SMALL_BUCKET)
  theta = [np.zeros(lv.reference.shape) for lv in tf.tree.levels]
  for x, (index, rows) in enumerate(zip(tf.index, logits)):
    for s, (t, i) in index.items():
      theta[t][x, i, :len(rows[s])] = rows[s]
  return tf, tuple(jnp.asarray(a) for a in theta)


def _leaf(tf, per_level, x, y):
  t, i = tf.index[x][y[:-1]]
  return float(per_level[t][x, i, y[-1]])


def _node(tf, per_level, x, s, k):
  t, i = tf.index[x][s]
  return np.asarray(per_level[t][x, i, :k])


def _compare_fields(tf, engine_field, brute, x, k, scale=1.0):
  for s in brute:
    assert_close(_node(tf, engine_field, x, s, k), scale * brute[s], err_msg=str(s))


@given(examples())
def test_sequence_quantities_match_enumeration(example):
  raw, logits = example
  tf, theta = _setup(raw, logits)
  out = ENGINE(tf.tree, theta)
  beta, w = raw["beta"], np.asarray(raw["prompt_weights"])
  totals = dict(L=0.0, J=0.0, J_beta=0.0, excess=0.0, c1=0.0, mean_excess=0.0)
  for x, (p, rows_logits) in enumerate(zip(ref.prompts_of(raw), logits)):
    rows = ref.softmax_rows(p, rows_logits)
    pi = ref.seq_probs(p, rows)
    star = ref.gibbs(p, beta)
    lengths = np.array([len(y) for y in p.leaves], float)
    mean = p.data / lengths / np.sum(p.data / lengths)
    for y, py, sy in zip(p.leaves, pi, star):
      assert_close(np.exp(_leaf(tf, out["leaf"], x, y)), py)
      assert_close(np.exp(_leaf(tf, out["star"], x, y)), sy)
    for i in np.flatnonzero(p.data > 0):
      assert_close(np.exp(_leaf(tf, out["mean"], x, p.leaves[i])), mean[i])
    kl_x = ref.kl(pi, p.rho)
    assert_close(out["KL"][x], kl_x)
    assert_close(out["log_z"][x], ref.log_partition_mp(p, beta))
    totals["L"] += w[x] * -np.sum(p.data * np.log(pi))
    totals["J"] += w[x] * np.sum(pi * p.reward)
    totals["J_beta"] += w[x] * (np.sum(pi * p.reward) - beta * kl_x)
    totals["excess"] += w[x] * ref.kl(p.data, pi)
    totals["c1"] += w[x] * (ref.log_partition_mp(p, beta) - np.sum(p.data * p.reward) / beta)
    totals["mean_excess"] += w[x] * ref.kl(p.data, mean)
  for key, value in totals.items():
    assert_close(out[key], value, err_msg=key)
  assert_close(out["token_sum"], totals["L"])
  assert_close(out["mean_excess_closed"], totals["mean_excess"])


@jax.jit
def _one_pass(tree, theta):
  log_pi, pi = policy.policy_log_probs_and_probs(tree, theta)
  reach, leaves = policy.reach_and_leaf_probs(tree, pi)
  return reach, leaves, (log_pi, pi)


@given(examples())
def test_one_pass_probabilities_match_enumeration(example):
  # π from the log-softmax's own exp pass, and π(y) as products of conditionals (no exp of a
  # log-space sum), against the enumeration's rows and sequence products
  raw, logits = example
  tf, theta = _setup(raw, logits)
  reach, leaves, (log_pi, pi) = _one_pass(tf.tree, theta)
  for x, (p, rows_logits) in enumerate(zip(ref.prompts_of(raw), logits)):
    rows = ref.softmax_rows(p, rows_logits)
    for s, row in rows.items():
      assert_close(_node(tf, pi, x, s, p.k), row, err_msg=str(s))
      assert_close(np.exp(_node(tf, log_pi, x, s, p.k)), row, err_msg=str(s))
      t, i = tf.index[x][s]
      assert_close(float(reach[t][x, i]), np.prod([rows[s[:j]][s[j]] for j in range(len(s))]))
    for y, py in zip(p.leaves, ref.seq_probs(p, rows)):
      assert_close(_leaf(tf, leaves, x, y), py, err_msg=str(y))


@given(examples())
def test_token_mean_loss_matches_enumeration(example):
  raw, logits = example
  tf, theta = _setup(raw, logits)
  out = ENGINE(tf.tree, theta)
  w = np.asarray(raw["prompt_weights"])
  total = 0.0
  for x, (p, rows_logits) in enumerate(zip(ref.prompts_of(raw), logits)):
    pi = ref.seq_probs(p, ref.softmax_rows(p, rows_logits))
    lengths = np.array([len(y) for y in p.leaves], float)
    total += w[x] * -np.sum(p.data / lengths * np.log(pi))
  assert_close(out["token_mean"], total)


@given(examples())
def test_gradients_match_enumeration(example):
  """∇L, ∇J, ∇KL, ∇J_β and the token-mean gradient, against REINFORCE written out per token."""
  raw, logits = example
  tf, theta = _setup(raw, logits)
  out = ENGINE(tf.tree, theta)
  beta, w = raw["beta"], np.asarray(raw["prompt_weights"])
  for x, (p, rows_logits) in enumerate(zip(ref.prompts_of(raw), logits)):
    rows = ref.softmax_rows(p, rows_logits)
    pi = ref.seq_probs(p, rows)
    log_ratio = np.log(pi) - np.log(p.rho)
    lengths = np.array([len(y) for y in p.leaves], float)
    # L = −Σ d log π: ∇ = −Σ_y d(y) ∇log π(y) = −(score field of d/π under π).
    _compare_fields(tf, out["grad_L"], ref.score_grad(p, rows, -p.data / pi), x, p.k, w[x])
    _compare_fields(tf, out["grad_mean"], ref.score_grad(p, rows, -p.data / lengths / pi), x,
                    p.k, w[x])
    _compare_fields(tf, out["grad_J"], ref.score_grad(p, rows, p.reward), x, p.k, w[x])
    _compare_fields(tf, out["grad_KL"], ref.score_grad(p, rows, log_ratio), x, p.k, w[x])
    _compare_fields(tf, out["grad_J_beta"], ref.score_grad(p, rows, p.reward - beta * log_ratio),
                    x, p.k, w[x])
    _compare_fields(tf, out["reward_kl"], ref.score_grad(p, rows, log_ratio), x, p.k)


SLOPES = {
    "k1": lambda a, b: 1.0,
    "k2": lambda a, b: np.log(a) - np.log(b),
    "k3": lambda a, b: 1.0 - b / a,
}
VALUES = {
    "k1": lambda a, b: np.log(a / b),
    "k2": lambda a, b: 0.5 * np.log(a / b) ** 2,
    "k3": lambda a, b: b / a - 1.0 - np.log(b / a),
}


def _verl_low_var_kl(a, b):
  kl_ = np.clip(np.log(b) - np.log(a), -20.0, 20.0)
  return float(np.clip(np.exp(kl_) - kl_ - 1.0, -10.0, 10.0))


def _verl_slope(a, b):
  u = np.log(b) - np.log(a)
  if abs(u) > 20.0 or np.exp(u) - u - 1.0 > 10.0:
    return 0.0
  return 1.0 - np.exp(u)


@given(examples())
def test_kl_estimators_match_enumeration(example):
  """G3: E_π Σ_t k_t and E_π Σ_t ∇k_t of every estimator, and the closed forms of k2, k3 and the
  later-reach terms, against per-token enumeration; E Σ k1 = E Σ k3 = KL."""
  raw, logits = example
  tf, theta = _setup(raw, logits)
  out = ENGINE(tf.tree, theta)
  for x, (p, rows_logits) in enumerate(zip(ref.prompts_of(raw), logits)):
    rows = ref.softmax_rows(p, rows_logits)
    pi = ref.seq_probs(p, rows)
    kl_x = ref.kl(pi, p.rho)
    for est in ("k1", "k2", "k3"):
      assert_close(out[f"value_{est}"][x], ref.token_value_sum(p, rows, VALUES[est]))
      _compare_fields(tf, out[f"field_{est}"], ref.token_loss_grad(p, rows, SLOPES[est]), x, p.k)
    assert_close(out["value_k3_clamped"][x], ref.token_value_sum(p, rows, _verl_low_var_kl))
    _compare_fields(tf, out["field_k3_clamped"], ref.token_loss_grad(p, rows, _verl_slope), x, p.k)
    assert_close(out["value_k1"][x], kl_x)
    assert_close(out["value_k3"][x], kl_x)
    k2_brute = ref.token_loss_grad(p, rows, SLOPES["k2"])
    k3_brute = ref.token_loss_grad(p, rows, SLOPES["k3"])
    _compare_fields(tf, out["k2_closed"], k2_brute, x, p.k)
    _compare_fields(tf, out["k3_closed"], k3_brute, x, p.k)
    full = ref.score_grad(p, rows, np.log(pi) - np.log(p.rho))
    _compare_fields(tf, out["later"], {s: full[s] - k2_brute[s] for s in full}, x, p.k)


@given(examples())
def test_fixed_points_are_stationary_by_enumeration(example):
  """G4: at the closed forms the enumerated expected fields vanish (k2 and k3 in the loss)."""
  raw, logits = example
  tf, theta = _setup(raw, logits)
  out = ENGINE(tf.tree, theta)
  beta = raw["beta"]
  for x, p in enumerate(ref.prompts_of(raw)):
    for construct, slope in (("k2_loss", SLOPES["k2"]), ("k3_loss", SLOPES["k3"])):
      rows = {s: np.exp(_node(tf, out[f"fixed_{construct}"], x, s, p.k)) for s in p.support}
      g_j = ref.score_grad(p, rows, p.reward)
      g_kl = ref.token_loss_grad(p, rows, slope)
      for s in rows:
        assert_close(g_j[s] - beta * g_kl[s], np.zeros(p.k), err_msg=f"{construct} {s}")


def test_k2_and_k3_fixed_points_differ_from_the_tilt_at_depth_two():
  """G4: a depth-2 tree where both fixed points differ from π*_β, and their reports."""
  raw = {"beta": 0.5, "vocab": ["<eos>", "a"], "eos": "<eos>", "max_length": 2,
         "prompt_weights": [1.0],
         "prompts": [{"reference": {"nodes": [{"prefix": [], "probs": {"<eos>": 0.5, "a": 0.5}},
                                              {"prefix": ["a"], "probs": {"<eos>": 0.5,
                                                                          "a": 0.5}}]},
                      "data": [{"tokens": ["<eos>"]}],
                      "reward": {"table": [{"tokens": ["a", "a"], "value": 1.0}],
                                 "default": 0.0}}]}
  tree = tree_from_dict(raw).tree
  beta = 0.5
  # Leaves: (eos) r=0, (a eos) r=0, (a a) r=1; ρ = (1/2, 1/4, 1/4).
  star = np.array([0.5, 0.25, 0.25 * np.e ** 2])
  star /= star.sum()
  # k2: π(a a|a) ∝ ρ e^{r/β} at the last node, then π(a|root) ∝ ρ e^{V^π(a)/β}.
  q = 0.5 * np.e ** 2 / (0.5 + 0.5 * np.e ** 2)  # π(a|a), V^π(a) = q
  p_a = 0.5 * np.exp(q / beta) / (0.5 + 0.5 * np.exp(q / beta))
  k2 = np.array([1 - p_a, p_a * (1 - q), p_a * q])
  leaves = lambda c: np.exp(np.asarray(policy.flat_slots(policy.leaf_log_probs(
      tree, fixed_points.closed_form_fixed_point(tree, c))))[0])
  order = [0, 2, 3]  # flat slots: root eos, (a) eos, (a) a
  assert_close(leaves("k1_reward")[order], star)
  assert_close(leaves("k2_loss")[order], k2)
  # k3: π(a|a) = p solves p(β + p − 1) = β/2 (a quadratic), V^π(a) = p; then at the root
  # π(a) = p' solves p'(β + p p' − p) = β/2.
  p = (1 - beta + np.sqrt((1 - beta) ** 2 + 2 * beta)) / 2
  p_root = (p - beta + np.sqrt((p - beta) ** 2 + 2 * beta * p)) / (2 * p)
  k3 = np.array([1 - p_root, p_root * (1 - p), p_root * p])
  assert_close(leaves("k3_loss")[order], k3)
  assert np.max(np.abs(k2 - star)) > 0.04 and np.max(np.abs(k3 - star)) > 0.04
  report = {c: jax.jit(fixed_points.fixed_point_report)(
      tree, fixed_points.closed_form_fixed_point(tree, c)) for c in fixed_points.CONSTRUCTS}
  for c in ("k2_loss", "k3_loss"):  # π*_β maximises J_β (B2), strictly here
    assert float(report[c]["regularized_reward"]) < float(report["k1_reward"]
                                                           ["regularized_reward"])
    assert float(report[c]["kl_to_optimum"]) > 0.0
    assert float(report[c]["regret"]) >= 0.0
  assert_close(report["k1_reward"]["kl_to_optimum"], 0.0)


FLOW_BUCKET = Bucket(prompts=2, vocab=4, nodes=(1, 3, 6))


@pytest.mark.parametrize("construct,geometry", [
    ("k1_reward", "natural"), ("k2_loss", "natural"), ("k3_loss", "natural"),
    ("k3_loss", "euclidean")])
def test_flow_reaches_the_closed_form(construct, geometry):
  """G4: both flows stop at the closed-form fixed point (four random trees of depth ≤ 3)."""
  trees = random_trees(np.random.default_rng(7), 4, FLOW_BUCKET, beta_range=(0.3, 3.0))
  flow = jax.jit(jax.vmap(lambda t: fixed_points.flow_to_fixed_point(
      t, construct, geometry=geometry)))(trees)
  closed = jax.vmap(lambda t: fixed_points.closed_form_fixed_point(t, construct))(trees)
  assert np.all(np.asarray(flow.residual) < 1e-11)
  leaf = jax.vmap(lambda t, lp: jnp.exp(policy.flat_slots(policy.leaf_log_probs(t, lp))))
  real = np.asarray(trees.prompt_weights > 0)[..., None]  # the flow ignores weight-0 prompts
  mask = np.asarray(jax.vmap(policy.leaf_mask)(trees)) & real
  got, want = np.asarray(leaf(trees, flow.log_pi)), np.asarray(leaf(trees, closed))
  assert_close(np.where(mask, got, 0.0), np.where(mask, want, 0.0), rtol=TOL_NUMERICAL[0],
               atol=TOL_NUMERICAL[1])


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("beta,scale", [(1e-6, 1.0), (1e6, 1e12)], ids=["tiny_beta", "huge_beta"])
def test_domain_edges_are_finite_and_right(beta, scale):
  """β = 1e-6 and 1e6 with |r|/β = 1e6 (the domain's edge): every number finite; log Z and log π*
  equal mpmath at 60 digits; the k2 and k3 fixed points stationary by enumeration."""
  raw = json.loads((EXAMPLES / "tree_table.json").read_text())
  raw["beta"] = beta
  for p in raw["prompts"]:
    table = p["reward"]["table"]
    top = max(abs(e["value"]) for e in table)
    for e in table:
      e["value"] *= scale / top
    p["reward"]["default"] = 0.0
  tf = tree_from_dict(raw, SMALL_BUCKET)
  theta = tuple(jnp.zeros(lv.reference.shape) for lv in tf.tree.levels)
  out = ENGINE(tf.tree, theta)
  for key in ("L", "J", "KL", "J_beta", "excess", "log_z", "c1", "mean_excess"):
    assert np.all(np.isfinite(np.asarray(out[key]))), key
  for key in ("grad_J", "grad_KL", "grad_J_beta", "reward_kl", "later", "k3_closed"):
    assert all(np.all(np.isfinite(np.asarray(a))) for a in out[key]), key
  for x, p in enumerate(ref.prompts_of(raw)):
    log_z = ref.log_partition_mp(p, beta, digits=60)
    assert_close(out["log_z"][x], log_z)
    for y, want in zip(p.leaves, ref.log_gibbs_mp(p, beta, digits=60)):
      assert_close(_leaf(tf, out["star"], x, y), want)
    for construct, slope in (("k2_loss", SLOPES["k2"]), ("k3_loss", SLOPES["k3"])):
      rows = {s: np.exp(_node(tf, out[f"fixed_{construct}"], x, s, p.k)) for s in p.support}
      g_j = ref.score_grad(p, rows, p.reward / scale)
      g_kl = ref.token_loss_grad(p, rows, slope)
      for s in rows:
        assert_close(g_j[s] - beta / scale * g_kl[s], np.zeros(p.k), err_msg=f"{construct} {s}")

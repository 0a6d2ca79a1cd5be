"""G5 group enumeration (theory/tree/groups.py) and the exact group-recipe fields against brute force.

The reference (tests/group_reference.py) lists every ordered group of leaves in NumPy and writes
the trainer's per-token ascent terms out; the engine enumerates multisets of (reward, length)
levels and sums bottom-up. Trees are small Hypothesis trees (≤ 7 leaves per prompt).
"""

from __future__ import annotations

import math

import group_reference as gref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tree_reference as ref
from conftest import assert_close
from hypothesis import given, settings, strategies as st

from nondecoupling.theory.recipes.base import ConfigError
from nondecoupling.theory.recipes.groups import DENSE_LEVELS, InfeasibleExactField
from nondecoupling.theory.statements import lengths
from nondecoupling.theory.tree import groups
from nondecoupling.theory.tree.policy import policy_log_probs
from nondecoupling.theory.tree.recipes.group_rl import (
  GroupRLConfig,
  TreePPOConfig,
  group_rl_field,
)
from nondecoupling.verify.families import sample_all
from nondecoupling.verify.statement import holds_mask
from nondecoupling.verify.tree_families import SMALL_BUCKET
from nondecoupling.verify.tree_group_checks import TREE_GROUP_STATEMENTS
from nondecoupling.verify.tree_io import tree_from_dict
from nondecoupling.verify.tree_strategies import tree_strategy

LEVELS = 7  # at most 7 leaves per prompt with vocabulary 3 and length 2
FIELD = jax.jit(group_rl_field, static_argnums=(2,))


@st.composite
def examples(draw):
  """(raw tree, logits rows, old logits rows) per prompt, logits in [−3, 3]."""
  raw = draw(tree_strategy(max_prompts=2, max_vocab=3, max_length=2))
  rows = lambda p: {s: np.array(draw(st.lists(st.floats(-3.0, 3.0, width=64), min_size=p.k,
                                              max_size=p.k))) for s in p.support}
  prompts = ref.prompts_of(raw)
  return raw, [rows(p) for p in prompts], [rows(p) for p in prompts]


def _theta(tf, logits):
  theta = [np.zeros(lv.reference.shape) for lv in tf.tree.levels]
  for x, (index, rows) in enumerate(zip(tf.index, logits)):
    for s, (t, i) in index.items():
      theta[t][x, i, :len(rows[s])] = rows[s]
  return tuple(jnp.asarray(a) for a in theta)


def _compare(raw, tf, field, brute_of):
  w = np.asarray(raw["prompt_weights"])
  worst = 0.0
  for x, p in enumerate(ref.prompts_of(raw)):
    brute = brute_of(x, p)
    for s, (t, i) in tf.index[x].items():
      got = np.asarray(field[t][x, i, :p.k])
      assert_close(got, w[x] * brute[s], err_msg=str(s))
      worst = max(worst, float(np.max(np.abs(got - w[x] * brute[s]))))
  return worst


ON_POLICY = [
    GroupRLConfig(group_size=3, use_std=True, loss_agg_mode="seq-mean-token-mean",
                  kl_form="none", max_length=2, levels=LEVELS),
    GroupRLConfig(group_size=3, use_std=False, loss_agg_mode="token-mean", kl_form="none",
                  max_length=2, levels=LEVELS),
    GroupRLConfig(group_size=2, use_std=True, loss_agg_mode="seq-mean-token-sum-norm",
                  kl_form="none", max_length=2, levels=LEVELS),
    GroupRLConfig(group_size=1, use_std=True, loss_agg_mode="seq-mean-token-sum",
                  kl_form="none", max_length=2, levels=LEVELS),
    GroupRLConfig(group_size=3, use_std=False, loss_agg_mode="seq-mean-token-sum",
                  kl_form="none", max_length=2, levels=LEVELS),
    # More levels than the dense grouping takes: the level masses one level at a time.
    GroupRLConfig(group_size=3, use_std=True, loss_agg_mode="seq-mean-token-mean",
                  kl_form="none", max_length=2, levels=DENSE_LEVELS + 3),
]


@pytest.mark.parametrize("cfg", ON_POLICY, ids=lambda c: f"G{c.group_size}-{c.loss_agg_mode}"
                         f"-{'std' if c.use_std else 'nostd'}-m{c.levels}")
@settings(max_examples=12)
@given(examples())
def test_exact_group_field_matches_brute_force(cfg, example):
  raw, logits, _ = example
  tf = tree_from_dict(raw, SMALL_BUCKET)
  theta = _theta(tf, logits)
  field = FIELD(tf.tree, theta, cfg)

  def brute(x, p):
    rows = ref.softmax_rows(p, logits[x])
    return gref.group_field(p, rows, rows, group_size=cfg.group_size, mode=cfg.loss_agg_mode,
                            use_std=cfg.use_std, eps=cfg.eps, t_max=2.0)
  _compare(raw, tf, field, brute)


def _slope_k3_clamped(pi, rho):
  u = np.clip(np.log(rho) - np.log(pi), -20.0, 20.0)
  inside = abs(np.log(rho) - np.log(pi)) <= 20.0 and np.expm1(u) - u <= 10.0
  return 1.0 - np.exp(u) if inside else 0.0


OFF_POLICY = [
    (GroupRLConfig(group_size=2, use_std=True, loss_agg_mode="token-mean", clip_low=0.2,
                   clip_high=0.28, kl_coef=0.1, kl_form="k3_clamped_loss", max_length=2,
                   levels=LEVELS), dict(kl_slope=_slope_k3_clamped)),
    (GroupRLConfig(group_size=3, use_std=False, loss_agg_mode="seq-mean-token-mean",
                   kl_coef=0.3, kl_form="k2_loss", max_length=2, levels=LEVELS),
     dict(kl_slope=lambda a, b: np.log(a) - np.log(b))),
    (GroupRLConfig(group_size=2, use_std=True, loss_agg_mode="seq-mean-token-sum",
                   kl_coef=0.3, kl_form="k1_reward", max_length=2, levels=LEVELS),
     dict(kl_reward=True)),
    (TreePPOConfig(group_size=2, loss_agg_mode="token-mean", kl_coef=0.2, kl_form="k3_loss",
                   max_length=2, levels=LEVELS),
     dict(advantage="value", kl_slope=lambda a, b: 1.0 - b / a)),
]


@pytest.mark.parametrize("case", OFF_POLICY, ids=lambda c: f"{type(c[0]).__name__}-{c[0].kl_form}")
@settings(max_examples=12)
@given(examples(), st.booleans())
def test_clipped_field_with_kl_matches_brute_force(case, example, on_policy):
  """θ ≠ θ_old: per-token ratio and clip masks, the KL loss aggregated like the policy loss, k1 in
  the reward before the advantage; θ = θ_old: the clip is inactive."""
  cfg, extra = case
  raw, logits, logits_old = example
  logits_old = logits if on_policy else logits_old
  tf = tree_from_dict(raw, SMALL_BUCKET)
  field = FIELD(tf.tree, _theta(tf, logits), cfg, _theta(tf, logits_old))

  def brute(x, p):
    return gref.group_field(p, ref.softmax_rows(p, logits[x]), ref.softmax_rows(p, logits_old[x]),
                            group_size=cfg.group_size, mode=cfg.loss_agg_mode,
                            use_std=cfg.use_std, eps=cfg.eps, t_max=2.0,
                            clip=(cfg.clip_low, cfg.clip_high), kl_coef=cfg.kl_coef, **extra)
  _compare(raw, tf, field, brute)


@settings(max_examples=12)
@given(examples())
def test_group_field_is_reinforce_with_leaf_weight_g_h(example):
  """groups.group_field (reinforce_field with G·h) = the brute-force on-policy group field."""
  raw, logits, _ = example
  tf = tree_from_dict(raw, SMALL_BUCKET)
  lp = policy_log_probs(tf.tree, _theta(tf, logits))
  field = GROUP_FIELD(tf.tree, lp)
  for x, p in enumerate(ref.prompts_of(raw)):
    rows = ref.softmax_rows(p, logits[x])
    brute = gref.group_field(p, rows, rows, group_size=3, mode="token-mean", use_std=True,
                             eps=1e-6, t_max=2.0)
    for s, (t, i) in tf.index[x].items():
      assert_close(np.asarray(field[t][x, i, :p.k]), brute[s], err_msg=str(s))


GROUP_FIELD = jax.jit(lambda tree, lp: groups.group_field(
    tree, lp, group_size=3, mode="token-mean", use_std=True, levels=LEVELS, max_length=2))


def test_multiset_table_against_counting():
  """K = C(L+G−2, G−1) distinct count vectors summing to G−1, and Σ multinomials = L^(G−1)."""
  for others, levels in ((0, 3), (1, 1), (3, 4), (7, 5)):
    counts, log_coef = groups.multiset_table(others, levels)
    assert counts.shape == (math.comb(others + levels - 1, levels - 1), levels)
    assert np.all(counts.sum(1) == others)
    assert len({tuple(r) for r in counts.tolist()}) == counts.shape[0]
    assert_close(np.exp(log_coef).sum(), float(levels) ** others)


def test_enumeration_limit_raises_one_line():
  assert groups.group_multisets(18, 8) <= groups.MAX_GROUP_MULTISETS < groups.group_multisets(19, 8)
  with pytest.raises(groups.InfeasibleGroupEnumeration) as err:
    groups.multiset_table(7, 20)
  assert isinstance(err.value, InfeasibleExactField)
  assert "\n" not in str(err.value) and "657800" in str(err.value)


def test_count_levels_by_mode():
  raw = {"beta": 1.0, "vocab": ["<eos>", "a", "b"], "eos": "<eos>", "max_length": 2,
         "prompt_weights": [1.0],
         "prompts": [{"reference": {"sequences": [
             {"tokens": ["<eos>"], "p": 0.3}, {"tokens": ["a", "<eos>"], "p": 0.2},
             {"tokens": ["a", "b"], "p": 0.3}, {"tokens": ["b", "a"], "p": 0.2}]},
             "data": [{"tokens": ["a", "b"]}],
             "reward": {"rule": "final_answer", "answer": "a"}}]}
  tree = tree_from_dict(raw, SMALL_BUCKET).tree
  # rewards: <eos> 0 (len 1), a<eos> 1 (len 2), ab 0 (len 2), ba 0 (len 2)
  assert groups.count_levels(tree, "seq-mean-token-mean") == 2
  assert groups.count_levels(tree, "token-mean") == 3


@pytest.mark.parametrize("kwargs, field", [
    (dict(group_size=0), "group_size"), (dict(use_std=1), "use_std"), (dict(eps=0.0), "eps"),
    (dict(loss_agg_mode="seq-mean"), "loss_agg_mode"), (dict(clip_high=-0.1), "clip_high"),
    (dict(kl_coef=float("nan")), "kl_coef"), (dict(kl_form="k4"), "kl_form"),
    (dict(levels=0), "levels"), (dict(max_length=1.5), "max_length"),
    (dict(dynamic_sampling=True, group_size=1, kl_form="none"), "group_size"),
    (dict(dynamic_sampling=True, kl_coef=0.1, kl_form="k2_loss"), "kl_form"),
])
def test_config_errors_are_one_line(kwargs, field):
  with pytest.raises(ConfigError) as err:
    GroupRLConfig(**kwargs)
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(f"GroupRLConfig.{field} is "), msg


def test_ppo_config_errors_are_one_line():
  with pytest.raises(ConfigError) as err:
    TreePPOConfig(clip_low=0.0)
  assert str(err.value) == "TreePPOConfig.clip_low is 0.0, expected a finite number > 0"


# ----------------------------------------------------------------------------- G5 statements

@settings(max_examples=20)
@given(examples(), st.integers(2, 3))
def test_g5_identities_hold_by_brute_force(example, group_size):
  """The closed forms the G5 statements assert, in NumPy on both sides: ordered groups against
  (G−1)/G E_π[(r − J)/|y|^p ∇log π] (p = 0, 1) and the Dr.GRPO constant."""
  raw, logits, _ = example
  c = (group_size - 1) / group_size
  for x, p in enumerate(ref.prompts_of(raw)):
    rows = ref.softmax_rows(p, logits[x])
    pi = ref.seq_probs(p, rows)
    centred = p.reward - np.sum(pi * p.reward)
    lengths = np.array([len(y) for y in p.leaves], float)
    kw = dict(group_size=group_size, use_std=False, eps=1e-6, t_max=2.0)
    for mode, weight in (("seq-mean-token-sum", c * centred),
                         ("seq-mean-token-mean", c * centred / lengths),
                         ("seq-mean-token-sum-norm", c * centred / 2.0)):
      brute = gref.group_field(p, rows, rows, mode=mode, **kw)
      closed = ref.score_grad(p, rows, weight)
      for s in brute:
        assert_close(brute[s], closed[s], err_msg=f"{mode} {s}")


@pytest.mark.parametrize("stmt", TREE_GROUP_STATEMENTS, ids=lambda s: s.name.split()[1])
def test_g5_checks_hold_on_random_trees(stmt):
  _, inst, _ = sample_all(9, 3)[0]
  v = stmt.check(inst, jax.random.PRNGKey(0))
  n = inst.prompt_weights.shape[0]
  assert np.asarray(v.margin).shape == (n,)
  applies = np.asarray(v.applies, bool)
  assert applies.sum() >= n // 3
  assert np.all(holds_mask(stmt, np.asarray(v.margin), np.asarray(v.slack))[applies])
  assert np.all(np.asarray(v.slack) > 0) or np.all(np.asarray(v.rhs)[applies] == 0)


def test_constant_length_statement_sees_ragged_lengths():
  """With ragged lengths the statement does not apply, and its sides differ by far more than the
  slack (so the comparison it makes can fail)."""
  raw = {"beta": 1.0, "vocab": ["<eos>", "a", "b"], "eos": "<eos>", "max_length": 2,
         "prompt_weights": [1.0],
         "prompts": [{"reference": {"sequences": [
             {"tokens": ["<eos>"], "p": 0.3}, {"tokens": ["a", "<eos>"], "p": 0.2},
             {"tokens": ["a", "b"], "p": 0.3}, {"tokens": ["b", "<eos>"], "p": 0.2}]},
             "data": [{"tokens": ["a", "b"]}],
             "reward": {"rule": "final_answer", "answer": "a"}}]}
  tree = tree_from_dict(raw, SMALL_BUCKET).tree
  theta = tuple(jnp.zeros(lv.reference.shape) for lv in tree.levels)
  v = lengths.constant_length_normalisers_agree(tree, theta)
  assert not bool(v.applies)
  assert float(v.margin) < -1e6 * float(v.slack), v


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 2), st.integers(1, 3), st.booleans()), min_size=1,
                max_size=24), st.integers(0, 3))
def test_group_levels_are_the_distinct_keys_in_order(entries, spare):
  """The levels of a row are NumPy's distinct (reward, key) pairs on the support, in increasing
  order; every supported entry points at its own pair; the unused levels are marked."""
  from nondecoupling.theory.recipes.groups import group_levels

  r = np.array([float(e[0]) / 2 for e in entries])
  key = np.array([e[1] for e in entries])
  sup = np.array([e[2] for e in entries])
  pairs = sorted({(a, b) for a, b, s in zip(r, key, sup) if s})
  m = max(1, len(pairs)) + spare
  level_of, lvl_r, lvl_key, used = (np.asarray(a) for a in group_levels(
      jnp.asarray(r), jnp.asarray(key), jnp.asarray(sup), m))
  assert used.tolist() == [i < len(pairs) for i in range(m)]
  assert [(float(a), int(b)) for a, b in zip(lvl_r[:len(pairs)], lvl_key[:len(pairs)])] == pairs
  for i in np.flatnonzero(sup):
    assert pairs[level_of[i]] == (r[i], key[i])
  assert np.all(level_of[~sup] == 0)


@pytest.mark.parametrize("spare", [0, 20], ids=["dense", "one_level_at_a_time"])
def test_level_masses_are_log_sums_over_each_level(spare):
  """Each level's log-mass is log Σ π over its leaves (scipy's logsumexp), at any spread of
  log-probabilities up to e^{−700}; a level below e^{−745} of the row's largest has mass 0
  (documented), and unused levels −∞."""
  from scipy.special import logsumexp

  r = np.array([0.0, 1.0, 0.0, 2.0, 1.0, 3.0, 2.0])
  log_p = np.array([-0.5, -3.0, -700.0, -1.0, -20.0, -800.0, -2.0])
  mask = np.array([True, True, True, True, True, True, False])
  m = 4 + spare
  level_of, lvl_r, _, lvl_log_p = (np.asarray(a) for a in groups._row_levels(
      jnp.asarray(r), jnp.zeros(7), jnp.asarray(mask), jnp.asarray(log_p), m))
  assert lvl_r[:4].tolist() == [0.0, 1.0, 2.0, 3.0]
  for j, value in enumerate((0.0, 1.0, 2.0)):
    want = logsumexp(log_p[mask & (r == value)])
    assert_close(lvl_log_p[j], want)
  assert lvl_log_p[3] == -np.inf and np.all(lvl_log_p[4:] == -np.inf)  # e^{−800}: below range

"""The tree trainer and the KL-construct tree recipes, against brute-force enumeration.

References are independent of the engine: per-token REINFORCE written out over every sequence
(tests/tree_reference.py), the mpmath Gibbs tilt, and the backward-induction closed forms of G4
(a different route from gradient ascent).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tree_reference as ref
from conftest import TOL_NUMERICAL, assert_close
from hypothesis import given, settings, strategies as st

from nondecoupling.theory.tree import fixed_points, policy
from nondecoupling.theory.tree.recipes import train as train_mod
from nondecoupling.theory.tree.recipes.base import TreeRecipe
from nondecoupling.theory.tree.recipes.constructs import KL_CONSTRUCT_RECIPES, construct_estimate
from nondecoupling.theory.tree.recipes.train import (
  train_tree_recipe,
  train_tree_recipe_sampled,
  tree_recipe_path,
)
from nondecoupling.verify.tree_families import SMALL_BUCKET
from nondecoupling.verify.tree_io import tree_from_dict
from nondecoupling.verify.tree_strategies import tree_strategy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SLOPES = {"k1_reward": None, "k2_loss": lambda a, b: np.log(a) - np.log(b),
          "k3_loss": lambda a, b: 1.0 - b / a}


@st.composite
def examples(draw):
  raw = draw(tree_strategy())
  logits = []
  for p in ref.prompts_of(raw):
    logits.append({s: np.array(draw(st.lists(st.floats(-3.0, 3.0, width=64), min_size=p.k,
                                             max_size=p.k))) for s in p.support})
  return raw, logits


def _setup(raw, logits):
  tf = tree_from_dict(raw, SMALL_BUCKET)
  theta = [np.zeros(lv.reference.shape) for lv in tf.tree.levels]
  for x, (index, rows) in enumerate(zip(tf.index, logits)):
    for s, (t, i) in index.items():
      theta[t][x, i, :len(rows[s])] = rows[s]
  return tf, tuple(jnp.asarray(a) for a in theta)


def _brute_field(p, rows, beta, construct):
  """Σ_y π(y)[...] per token, written out: the expected ascent direction of a construct."""
  pi = ref.seq_probs(p, rows)
  if construct == "k1_reward":
    return ref.score_grad(p, rows, p.reward - beta * (np.log(pi) - np.log(p.rho)))
  g_j = ref.score_grad(p, rows, p.reward)
  g_kl = ref.token_loss_grad(p, rows, SLOPES[construct])
  return {s: g_j[s] - beta * g_kl[s] for s in g_j}


def _node(tf, per_level, x, s, k):
  t, i = tf.index[x][s]
  return np.asarray(per_level[t][x, i, :k])


@settings(max_examples=15)
@given(examples(), st.sampled_from(sorted(KL_CONSTRUCT_RECIPES)), st.floats(0.05, 2.0))
def test_one_step_is_the_enumerated_field(example, construct, lr):
  """θ after one step = θ + lr · w_x · (per-token REINFORCE/loss gradient over every sequence)."""
  raw, logits = example
  tf, theta = _setup(raw, logits)
  new, _ = train_tree_recipe(tf.tree, KL_CONSTRUCT_RECIPES[construct], 1, lr, theta0=theta)
  w = np.asarray(raw["prompt_weights"])
  for x, (p, rows_logits) in enumerate(zip(ref.prompts_of(raw), logits)):
    rows = ref.softmax_rows(p, rows_logits)
    brute = _brute_field(p, rows, raw["beta"], construct)
    for s in brute:
      step = (_node(tf, new, x, s, p.k) - rows_logits[s])[p.support[s]]
      assert_close(step, (lr * w[x] * brute[s])[p.support[s]], err_msg=f"{construct} {s}")


@pytest.mark.parametrize("construct", sorted(KL_CONSTRUCT_RECIPES))
def test_ascent_reaches_the_fixed_point(construct):
  """2000 exact steps end at π*_β (k1, against mpmath) or at the backward-induction closed form."""
  raw = json.loads((EXAMPLES / "tree_table.json").read_text())
  tf = tree_from_dict(raw)
  theta, _ = train_tree_recipe(tf.tree, KL_CONSTRUCT_RECIPES[construct],
                               2000, 5.0)
  leaf = policy.leaf_log_probs(tf.tree, policy.policy_log_probs(tf.tree, theta))
  target = policy.leaf_log_probs(tf.tree, fixed_points.closed_form_fixed_point(tf.tree,
                                                                                construct))
  for x, p in enumerate(ref.prompts_of(raw)):
    got = [float(np.exp(leaf[tf.index[x][y[:-1]][0]][x, tf.index[x][y[:-1]][1], y[-1]]))
           for y in p.leaves]
    if construct == "k1_reward":
      want = np.exp(ref.log_gibbs_mp(p, raw["beta"]))
    else:
      want = [float(np.exp(target[tf.index[x][y[:-1]][0]][x, tf.index[x][y[:-1]][1], y[-1]]))
              for y in p.leaves]
    assert_close(got, want, *TOL_NUMERICAL)


def _counter_recipe():
  """A stateful recipe: zero field, the hook adds 1 to every logit and counts its calls."""
  zero = lambda tree, theta, cfg: tuple(jnp.zeros_like(t) for t in theta)
  return TreeRecipe(
      name="counter", config=None, field=zero,
      estimate=lambda tree, theta, cfg, key, n: zero(tree, theta, cfg),
      summary="test", reference="test",
      init=lambda tree, theta, cfg: jnp.zeros(()),
      update=lambda tree, old, new, state, lr, cfg: (tuple(t + 1.0 for t in new), state + 1.0))


def test_state_hook_runs_after_every_step():
  tf = tree_from_dict(json.loads((EXAMPLES / "tree_exact_match.json").read_text()))
  theta0 = policy.initial_logits(tf.tree)
  for run in (lambda r: train_tree_recipe(tf.tree, r, 7, 0.1),
              lambda r: train_tree_recipe_sampled(tf.tree, r, 7, 0.1, jax.random.PRNGKey(1), 3)):
    theta, state = run(_counter_recipe())
    assert float(state) == 7.0
    for a, b in zip(theta, theta0):
      assert_close(a, np.asarray(b) + 7.0)


def test_sampled_trainer_with_an_exact_estimator_is_the_exact_trainer():
  """The sampled path differs from the exact one only in which callable gives the direction."""
  tf = tree_from_dict(json.loads((EXAMPLES / "tree_final_answer.json").read_text()))
  exact = KL_CONSTRUCT_RECIPES["k3_loss"]
  as_estimate = dataclasses.replace(exact, estimate=lambda tree, theta, cfg, key, n:
                                    exact.field(tree, theta, cfg))
  a, _ = train_tree_recipe(tf.tree, exact, 20, 1.0)
  b, _ = train_tree_recipe_sampled(tf.tree, as_estimate, 20, 1.0, jax.random.PRNGKey(0), 2)
  for u, v in zip(a, b):
    assert_close(u, v)


@pytest.mark.parametrize("construct", sorted(KL_CONSTRUCT_RECIPES))
def test_estimator_is_unbiased_with_error_decaying_as_one_over_root_n(construct):
  """The estimator's mean error against the enumerated field falls ~ n^-1/2 (fitted slope)."""
  raw = json.loads((EXAMPLES / "tree_table.json").read_text())
  tf = tree_from_dict(raw)
  rng = np.random.default_rng(0)
  theta = tuple(jnp.asarray(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tf.tree.levels)
  est = jax.jit(lambda key, n: construct_estimate(tf.tree, theta, None, key, n, construct),
                static_argnums=1)
  lp = policy.policy_log_probs(tf.tree, theta)
  w = np.asarray(raw["prompt_weights"])
  exact = [np.zeros(lv.reference.shape) for lv in tf.tree.levels]
  for x, p in enumerate(ref.prompts_of(raw)):
    rows = {s: np.exp(_node(tf, lp, x, s, p.k)) for s in p.support}
    for s, g in _brute_field(p, rows, raw["beta"], construct).items():
      t, i = tf.index[x][s]
      exact[t][x, i, :p.k] = w[x] * g
  sizes = np.array([64, 512, 4096])
  errors = []
  for n in sizes:
    sq = [sum(float(np.sum((np.asarray(a) - e) ** 2)) for a, e in
              zip(est(jax.random.PRNGKey(j), int(n)), exact)) for j in range(8)]
    errors.append(np.sqrt(np.mean(sq)))
  slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
  assert -0.65 < slope < -0.35, (slope, errors)


def test_path_records_points_and_compiles_once():
  tf = tree_from_dict(json.loads((EXAMPLES / "tree_length_penalty.json").read_text()))
  recipe = KL_CONSTRUCT_RECIPES["k2_loss"]
  thetas, _ = tree_recipe_path(tf.tree, recipe, 30, 0.5, 3)
  assert thetas[0].shape[0] == 4
  last, _ = train_tree_recipe(tf.tree, recipe, 10, 0.5, theta0=tuple(t[2] for t in thetas))
  for a, b in zip(last, thetas):
    assert_close(a, b[3])
  before = train_mod._path._cache_size()
  tree_recipe_path(tf.tree, recipe, 30, 0.25, 3)  # a new learning rate: traced, no recompile
  assert train_mod._path._cache_size() == before
  with pytest.raises(ValueError, match="multiple of points"):
    tree_recipe_path(tf.tree, recipe, 10, 0.5, 3)

"""The group-RL tree recipes: sampled estimators converge to the exact fields as 1/√n, depth-1
trees agree with the atomic recipes, the registry and the dynamic-sampling factor.

Convergence: one small depth-3 tree, fixed seeds; for n = 2^8 … 2^14 estimator calls, the RMS over
independent replicas of ‖mean of n calls − exact field‖₂; the fitted log-log slope must lie in
[−0.65, −0.35] (1/√n), and the error at 2^14 must be below 5 % of the field's norm.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from helpers import rms_error_by_calls

from nondecoupling.theory.instance import make_instance
from nondecoupling.theory.recipes.grpo import DR_GRPO as ATOMIC_DR_GRPO, GRPO as ATOMIC_GRPO
from nondecoupling.theory.recipes.ppo import PPO_CLIP as ATOMIC_PPO
from nondecoupling.theory.tree.atomic import leaf_policy, tree_from_atomic
from nondecoupling.theory.tree.build import PromptTree, build_tree
from nondecoupling.theory.tree.groups import leaf_rewards
from nondecoupling.theory.tree.policy import (
  flat_slots,
  leaf_lengths,
  leaf_mask,
  policy_log_probs,
  reference_log_probs,
)
from nondecoupling.theory.tree.recipes.advantages import informative_probability
from nondecoupling.theory.tree.recipes.group_rl import fill_levels
from nondecoupling.theory.tree.recipes.registry import TREE_RECIPES, get_tree_recipe
from nondecoupling.theory.tree.rewards import final_answer_reward

CHUNK, CHUNKS, REPS = 256, 64, 8  # n = 2^8 … 2^14 calls, 8 replicas


def _tree():
  """Two prompts, vocabulary <eos>, a, b, length ≤ 3; reward 1 for answer b before EOS."""
  rows = {(): [0.3, 0.4, 0.3], (1,): [0.5, 0.2, 0.3], (2,): [0.4, 0.3, 0.3],
          (1, 1): [0.6, 0.2, 0.2], (1, 2): [0.5, 0.25, 0.25], (2, 1): [0.7, 0.2, 0.1],
          (2, 2): [0.2, 0.5, 0.3]}
  reward = final_answer_reward(answer=2, eos=0)
  p1 = PromptTree(3, 0, 3, rows, {(2, 0): 1.0}, reward)
  p2 = PromptTree(3, 0, 2, {(): [0.2, 0.5, 0.3], (1,): [0.3, 0.3, 0.4], (2,): [0.5, 0.25, 0.25]},
                  {(1, 2): 0.5, (2, 0): 0.5}, final_answer_reward(answer=1, eos=0))
  tree, _ = build_tree([p1, p2], [0.6, 0.4], 0.5)
  return tree


def _theta(tree, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(0.0, scale, lv.reference.shape)) for lv in tree.levels)


CASES = {
    "grpo": (dict(group_size=4), False),
    "dr_grpo": (dict(group_size=4), False),
    "dapo": (dict(group_size=4), False),
    "ppo_clip": (dict(group_size=2), True),
    "grpo_k1_reward": (dict(group_size=3, kl_form="k1_reward", kl_coef=0.3), False),
    "grpo_k2_loss_clipped": (dict(group_size=3, kl_form="k2_loss", kl_coef=0.3,
                                  loss_agg_mode="token-mean"), True),
}


def _norm(levels):
  return jnp.sqrt(sum(jnp.sum(a * a) for a in levels))


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimator_converges_as_one_over_root_n(case):
  overrides, off_policy = CASES[case]
  recipe = get_tree_recipe(case.split("_k")[0])
  tree = _tree()
  cfg = fill_levels(tree, dataclasses.replace(recipe.config, **overrides))
  theta = _theta(tree, 1)
  theta_old = _theta(tree, 2) if off_policy else None
  exact = jax.jit(recipe.field, static_argnums=2)(tree, theta, cfg, theta_old)

  @jax.jit
  def chunk_errors(keys):
    means = jax.lax.map(lambda k: recipe.estimate(tree, theta, cfg, k, CHUNK, theta_old), keys)
    diff = tuple(m - e[None] for m, e in zip(means, exact))  # [REPS*CHUNKS, ...]
    return diff

  keys = jax.random.split(jax.random.PRNGKey(zlib.crc32(case.encode())), REPS * CHUNKS)
  diffs = [np.asarray(d).reshape((REPS, CHUNKS) + d.shape[1:]) for d in chunk_errors(keys)]
  ns, errs = rms_error_by_calls(diffs, CHUNK)
  slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
  assert -0.65 <= slope <= -0.35, (case, slope, errs)
  assert errs[-1] < 0.05 * float(_norm(exact)), (case, errs[-1], float(_norm(exact)))


def _atomic_instance(seed):
  rng = np.random.default_rng(seed)
  x, y = 2, 4
  data = rng.dirichlet(np.ones(y), size=x)
  reward = np.round(rng.uniform(-1.0, 1.0, (x, y)), 1)
  reward[0, 1] = reward[0, 0]  # a repeated reward level
  return make_instance([0.3, 0.7], data, reward, 0.5, reference=rng.dirichlet(np.ones(y), x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_one_agrees_with_atomic_recipes(seed):
  """At depth 1 every length is 1: GRPO (seq-mean-token-mean, std, clamped k3 KL), Dr.GRPO
  (1/(G T) with T = 1, no std) and PPO-clip (θ ≠ θ_old) are the atomic recipes."""
  inst = _atomic_instance(seed)
  tree = tree_from_atomic(inst)
  rng = np.random.default_rng(100 + seed)
  theta, theta_old = rng.normal(0.0, 1.0, (2, 2, 4))
  as_tree = lambda t: (jnp.asarray(t)[:, None, :],)
  pairs = [
      (get_tree_recipe("grpo"), ATOMIC_GRPO, dict(group_size=4), dict(group_size=4), False),
      (get_tree_recipe("dr_grpo"), ATOMIC_DR_GRPO, dict(group_size=3), dict(group_size=3),
       False),
      (get_tree_recipe("ppo_clip"), ATOMIC_PPO, {}, {}, True),
  ]
  for tree_recipe, atomic, tree_kw, atomic_kw, off in pairs:
    cfg = fill_levels(tree, dataclasses.replace(tree_recipe.config, **tree_kw))
    old = theta_old if off else theta
    field = jax.jit(tree_recipe.field, static_argnums=2)
    got = field(tree, as_tree(theta), cfg, as_tree(old) if off else None)[0][:, 0, :]
    acfg = atomic.prepare(inst, dataclasses.replace(atomic.config, **atomic_kw))
    want = jax.jit(atomic.field, static_argnums=3)(inst, jnp.asarray(theta), jnp.asarray(old),
                                                   acfg)
    assert_close(got, want, err_msg=tree_recipe.name)


def test_registry_has_the_group_recipes():
  for name in ("grpo", "dr_grpo", "dapo", "ppo_clip"):
    recipe = TREE_RECIPES[name]
    assert recipe.name == name and recipe.reference and recipe.summary


def test_dynamic_sampling_probability_by_enumeration():
  """q_x = P(a group of G does not have all rewards equal), against listing the groups."""
  tree = _tree()
  theta = _theta(tree, 3)
  lp = policy_log_probs(tree, theta)
  q = informative_probability(tree, lp, 3)
  pi, r, mask = (np.asarray(a) for a in (jnp.exp(leaf_policy(tree, lp)), leaf_rewards(tree),
                                          leaf_mask(tree)))
  for x in range(2):
    leaves = np.flatnonzero(mask[x])
    total = sum(np.prod(pi[x, list(g)]) for g in itertools.product(leaves, repeat=3)
                if len({r[x, i] for i in g}) > 1)
    assert_close(q[x], total)
  # Under jit the level count is static; spare level slots change nothing.
  jitted = jax.jit(informative_probability, static_argnums=(2, 3))(tree, lp, 3, 12)
  assert_close(jitted, q)


@pytest.mark.parametrize("name, overrides", [
    ("dr_grpo", dict(group_size=3)),
    ("grpo", dict(group_size=3, use_std=False, kl_coef=0.0)),  # n = 1/(G |o|)
    ("dr_grpo", dict(group_size=3, kl_form="k1_reward", kl_coef=0.3)),  # every leaf a level
    ("ppo_clip", dict()),  # Â = r − V, one response: token-mean is 1/|o|
])
def test_on_policy_closed_form_field_equals_listing_every_group(name, overrides):
  """The on-policy field without std (closed form E[Â_1 | y] = (1 − 1/G)(r − V); PPO's r − V)
  against the gradient of Σ_groups P(group) Σ_i w_i log π(o_i), listing every group of leaves."""
  tree = _tree()
  recipe = get_tree_recipe(name)
  cfg = dataclasses.replace(recipe.config, **overrides)
  theta = _theta(tree, 5)
  field = recipe.field(tree, theta, recipe.prepare(tree, cfg))
  g = cfg.group_size
  mask = np.asarray(leaf_mask(tree))
  lengths = np.asarray(flat_slots(leaf_lengths(tree)), np.float64)
  lp_old = np.asarray(leaf_policy(tree, policy_log_probs(tree, theta)))
  r = np.asarray(leaf_rewards(tree), np.float64)
  if cfg.kl_form == "k1_reward":  # r − β Σ_t log(π_old/ρ) = r − β (log π_old(y) − log ρ(y))
    lp_ref = np.asarray(leaf_policy(tree, reference_log_probs(tree)))
    r = np.where(mask, r - cfg.kl_coef * (np.where(mask, lp_old, 0.0) - np.where(mask, lp_ref, 0.0)),
                 0.0)
  t_max = float(tree.depth)

  coef = np.zeros_like(r)  # Σ over groups and members at each leaf of P(group) Â_i n_i
  for x in range(mask.shape[0]):
    groups = np.array(list(itertools.product(np.flatnonzero(mask[x]), repeat=g)))
    rs, ls = r[x, groups], lengths[x, groups]
    value = np.sum(np.exp(lp_old[x, mask[x]]) * r[x, mask[x]])
    adv = rs - (rs.mean(axis=1, keepdims=True) if cfg.advantage == "group" else value)
    n = {"seq-mean-token-mean": 1.0 / (g * ls),
         "token-mean": 1.0 / np.broadcast_to(ls.sum(axis=1, keepdims=True), ls.shape),
         "seq-mean-token-sum-norm": np.full(ls.shape, 1.0 / (g * t_max))}[cfg.loss_agg_mode]
    prob = np.exp(lp_old[x, groups].sum(axis=1, keepdims=True))
    np.add.at(coef[x], groups, float(tree.prompt_weights[x]) * prob * adv * n)

  def objective(th):
    lp = leaf_policy(tree, policy_log_probs(tree, th))
    return jnp.sum(jnp.where(mask, coef * jnp.where(mask, lp, 0.0), 0.0))

  expected = jax.grad(objective)(theta)
  for a, b in zip(field, expected):
    assert_close(a, b)

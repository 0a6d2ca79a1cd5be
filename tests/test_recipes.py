"""Fusion recipes as exact fields (THEORY.md F): exactness against brute-force enumeration of every
draw, Monte-Carlo agreement, the binomial forms, closed-form special cases, training and regret."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from nondecoupling.theory import frontier as fr, objectives as obj, recipes as rc
from nondecoupling.theory.instance import make_instance, pad_instance


def general_instance(n_x=1, n_y=3, seed=0, levels=None, zero_data=False):
  rng = np.random.default_rng(seed)
  d = rng.dirichlet(np.ones(n_y), n_x)
  if zero_data:
    d[:, -1] = 0.0
    d /= d.sum(-1, keepdims=True)
  ref = rng.dirichlet(np.ones(n_y) * 2, n_x)
  if levels is None:
    r = rng.normal(size=(n_x, n_y))
  else:
    r = rng.choice(levels, size=(n_x, n_y))
    r[:, 0], r[:, 1] = max(levels), min(levels)
  w = rng.dirichlet(np.ones(n_x))
  return make_instance(w, d, r, 0.5, reference=ref)


def thetas(inst, seed=1, scale=0.8):
  rng = np.random.default_rng(seed)
  theta_old = obj.initial_logits(inst)
  theta = theta_old + jnp.asarray(rng.normal(size=inst.shape) * scale)
  return theta, theta_old


def brute_force_field(inst, name, theta, theta_old, cfg):
  """Σ over every draw (on-policy tuple from π_old, demo from d) of probability × estimator."""
  assert inst.shape[0] == 1
  n_y = inst.shape[1]
  n_on = max(rc.RECIPES[name].samples(cfg), 1)
  pi_old = np.exp(np.asarray(obj.policy_log_probs(inst, theta_old)))[0]
  d = np.asarray(inst.data)[0]
  tuples = np.array(list(itertools.product(range(n_y), repeat=n_on)), dtype=np.int32)
  on = np.repeat(tuples, n_y, axis=0)
  demo = np.tile(np.arange(n_y, dtype=np.int32), len(tuples))
  prob = np.prod(pi_old[on], axis=1) * d[demo]
  keep = prob > 0
  draws = rc.Draws(on=jnp.asarray(on[keep])[:, None, :], demo=jnp.asarray(demo[keep])[:, None])
  est = jax.jit(jax.vmap(lambda dr: rc.recipe_estimate(inst, name, theta, dr, theta_old, cfg)))(
      draws)
  return jnp.tensordot(jnp.asarray(prob[keep]), est, axes=1)


SMALL_CONFIGS = [
    ("sft", rc.SFTConfig(coef=0.7)),
    ("reinforce", rc.ReinforceConfig()),
    ("grpo", rc.GroupPGConfig(group_size=4)),
    ("grpo", rc.GroupPGConfig(group_size=3, inner_steps=3, clip_low=0.1, clip_high=0.3)),
    ("grpo_reverse_kl", rc.GroupPGConfig(group_size=3, kl_form="reverse", kl_coef=0.3)),
    ("dr_grpo", rc.GroupPGConfig(group_size=4, use_std=False, kl_coef=0.0, kl_form="none")),
    ("dr_grpo", rc.GroupPGConfig(group_size=3, use_std=False, kl_coef=0.2, inner_steps=2)),
    ("ppo_clip", rc.PPOClipConfig(samples=2)),
    ("kl_k3", rc.KLConfig(coef=0.5, samples=2)),
    ("kl_reverse", rc.KLConfig(form="reverse", samples=2)),
    ("hpt", rc.HPTConfig(n_rollouts=4, switch_gate=1)),
    ("hpt", rc.HPTConfig(n_rollouts=3, switch_gate=0, use_std=True)),
    ("luffy", rc.LUFFYConfig(n_on=3)),
    ("luffy", rc.LUFFYConfig(n_on=3, use_std=True, shaping_gamma=None)),
    ("srft", rc.SRFTConfig(n_on=3, entropy_coef=0.01)),
    ("srft", rc.SRFTConfig(n_on=3, use_std=True, shaping_gamma=0.1)),
    ("relift", rc.ReLIFTConfig(n_rollouts=4, batch_prompts=64)),
    ("relift", rc.ReLIFTConfig(n_rollouts=3, use_std=True)),
]


BINARY_CASES = [(n, c) for n, c in SMALL_CONFIGS if n in ("grpo", "hpt", "luffy", "srft", "relift")]
CASES = ([(n, c, "general") for n, c in SMALL_CONFIGS]
         + [(n, c, "binary") for n, c in BINARY_CASES])


@pytest.mark.parametrize("name,cfg,kind", CASES, ids=lambda v: str(v)[:40])
def test_exact_field_equals_enumeration_of_every_draw(name, cfg, kind):
  levels = None if kind == "general" else [-1.0, 1.0]
  inst = general_instance(seed=3, levels=levels, zero_data=(kind == "binary"))
  theta, theta_old = thetas(inst)
  if getattr(cfg, "inner_steps", 2) == 1:
    theta_old = theta  # one inner step: the rollout policy is the current one
  exact = rc.recipe_field(inst, name, theta, theta_old, cfg)
  brute = brute_force_field(inst, name, theta, theta_old, cfg)
  assert_close(exact, brute, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["grpo", "hpt", "luffy"])
def test_default_configs_against_enumeration(name):
  # Published group sizes (7-8) with three responses and three reward levels.
  inst = general_instance(seed=5, levels=[0.0, 0.5, 1.0])
  theta, theta_old = thetas(inst, scale=0.0)
  cfg = rc.RECIPES[name].config
  exact = rc.recipe_field(inst, name, theta, theta_old, cfg)
  brute = brute_force_field(inst, name, theta, theta_old, cfg)
  assert_close(exact, brute, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", sorted(rc.RECIPES))
def test_monte_carlo_mean_matches_exact_field(name):
  inst = general_instance(n_x=2, n_y=4, seed=11)
  theta, theta_old = thetas(inst, seed=2, scale=0.5)
  n = 4000
  keys = jax.random.split(jax.random.PRNGKey(7), n)
  samples = jax.jit(jax.vmap(lambda k: rc.recipe_sample(k, inst, name, theta, theta_old)))(keys)
  mean = np.asarray(samples.mean(0))
  se = np.asarray(samples.std(0)) / np.sqrt(n)
  exact = np.asarray(rc.recipe_field(inst, name, theta, theta_old))
  # CLT tolerance: 5 standard errors (estimated from the samples), plus rounding.
  assert np.all(np.abs(mean - exact) <= 5 * se + 1e-12), (mean, exact, se)
  assert np.any(np.abs(exact) > 1e-4)  # the check is not vacuous


def brute_force_c(p, g, use_std, eps=1e-6, off=()):
  """c(p) = E[A_1 (s_1 − p)] / (p (1 − p)) over every success pattern of the G samples."""
  total = 0.0
  for s in itertools.product([0, 1], repeat=g):
    prob = np.prod([p if b else 1 - p for b in s])
    rewards = np.array(list(s) + list(off), dtype=float)
    a = rewards - rewards.mean()
    if use_std:
      a = a / (rewards.std(ddof=1) + eps)
    total += prob * a[0] * (s[0] - p)
  return total / (p * (1 - p))


@pytest.mark.parametrize("g", [2, 4, 6])
@pytest.mark.parametrize("use_std", [False, True])
@pytest.mark.parametrize("off", [(), (1.0,)])
def test_binomial_coefficient_against_brute_force(g, use_std, off):
  for p in (0.1, 0.4, 0.85):
    c = float(rc.binomial_group_coefficient(p, g, use_std=use_std, off_rewards=off))
    assert c == pytest.approx(brute_force_c(p, g, use_std, off=off), rel=1e-10, abs=1e-12)
  if not use_std and not off:
    assert float(rc.binomial_group_coefficient(0.3, g)) == pytest.approx(1 - 1 / g)
  if not use_std and off:
    assert float(rc.binomial_group_coefficient(0.3, g, off_rewards=off)) == pytest.approx(
        1 - 1 / (g + 1))


def test_binomial_off_advantage_and_gates():
  for g in (3, 7):
    for p in (0.2, 0.7):
      brute = 0.0
      brute_std = 0.0
      for s in itertools.product([0, 1], repeat=g):
        prob = np.prod([p if b else 1 - p for b in s])
        rewards = np.array(list(s) + [1.0])
        brute += prob * (1.0 - rewards.mean())
        brute_std += prob * (1.0 - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)
      assert float(rc.binomial_off_advantage(p, g)) == pytest.approx(brute, rel=1e-12)
      assert float(rc.binomial_off_advantage(p, g)) == pytest.approx(g * (1 - p) / (g + 1))
      assert float(rc.binomial_off_advantage(p, g, use_std=True)) == pytest.approx(brute_std,
                                                                                  rel=1e-10)
  p = jnp.asarray([0.0, 0.3, 1.0])
  assert_close(rc.binomial_gate_probability(p, 8, 0, 0), (1 - p) ** 8)
  assert_close(rc.binomial_gate_probability(0.3, 8, 0, 8), 1.0)


def test_binary_group_fields_are_multiples_of_the_success_gradient():
  inst = general_instance(n_x=2, n_y=4, seed=4, levels=[0.0, 1.0])
  theta, _ = thetas(inst)
  pi = jnp.exp(obj.policy_log_probs(inst, theta))
  succ = (inst.reward > 0).astype(pi.dtype)
  p = jnp.sum(pi * succ, -1)
  d_x = pi * succ - p[:, None] * pi
  w = inst.prompt_weights[:, None]
  for use_std in (False, True):
    cfg = rc.GroupPGConfig(group_size=5, use_std=use_std, kl_coef=0.0, kl_form="none")
    field = rc.recipe_field(inst, "grpo", theta, config=cfg)
    c = rc.binomial_group_coefficient(p, 5, use_std=use_std)
    assert_close(field, w * c[:, None] * d_x, rtol=1e-9, atol=1e-12)
  # HPT with 0/1 rewards: β Pr(K ≤ γ)(d − π) + c_{>γ}(p) d_x (fusion-methods.md §2).
  cfg = rc.HPTConfig(n_rollouts=8, switch_gate=2, entropy_coef=0.0)
  field = rc.recipe_field(inst, "hpt", theta, config=cfg)
  c_gate = 0.0
  for k in range(8):
    pmf = jax.scipy.stats.binom.pmf(k, 7, p)
    c_gate = c_gate + pmf * ((k + 1 > 2) * (1 - (k + 1) / 8) - (k > 2) * (-k / 8))
  sft_w = rc.binomial_gate_probability(p, 8, 0, 2)
  expected = w * (sft_w[:, None] * (inst.data - pi) + c_gate[:, None] * d_x)
  assert_close(field, expected, rtol=1e-9, atol=1e-12)
  # LUFFY, 0/1 rewards, demo always correct: (7/8) c_mix d_x with c_mix = 1 − 1/8 and
  # E[A_off] = 7 (1 − p)/8 on the demo, shaped by γπ/(π + γ)².
  one_hot = make_instance(inst.prompt_weights, jax.nn.one_hot(jnp.argmax(inst.reward, -1), 4),
                          inst.reward, 0.5, reference=inst.reference)
  field = rc.recipe_field(one_hot, "luffy", theta, config=rc.LUFFYConfig(entropy_coef=0.0))
  star = one_hot.data
  phi = 0.1 * pi / (pi + 0.1) ** 2
  off = (7 * (1 - p) / 8)[:, None] * jnp.sum(star * phi, -1, keepdims=True) * (star - pi)
  expected = w * ((7 / 8) * (7 / 8) * d_x + off / 8)
  assert_close(field, expected, rtol=1e-9, atol=1e-12)


def test_fields_match_gradients_of_objectives():
  inst = general_instance(n_x=3, n_y=4, seed=8)
  theta, _ = thetas(inst)
  grad_l = jax.grad(lambda t: obj.sft_loss(inst, obj.policy_log_probs(inst, t)))(theta)
  grad_j = jax.grad(lambda t: obj.reward(inst, obj.policy_log_probs(inst, t)))(theta)
  assert_close(rc.recipe_field(inst, "sft", theta), -grad_l)
  assert_close(rc.recipe_field(inst, "reinforce", theta), grad_j)
  cfg = rc.GroupPGConfig(group_size=6, use_std=False, kl_coef=0.0, kl_form="none")
  assert_close(rc.recipe_field(inst, "dr_grpo", theta, config=cfg), (1 - 1 / 6) * grad_j)
  # KL terms: as implemented (k3 loss) the gradient is forward KL(ρ‖π): π − ρ; as intended,
  # reverse KL(π‖ρ).
  def kl(t, forward):
    lp = obj.policy_log_probs(inst, t)
    lr = obj.safe_log(inst.reference)
    return obj.expect(inst, obj.kl_rows(lr, lp) if forward else obj.kl_rows(lp, lr))
  assert_close(rc.recipe_field(inst, "kl_k3", theta), -jax.grad(lambda t: kl(t, True))(theta))
  assert_close(rc.recipe_field(inst, "kl_reverse", theta),
               -jax.grad(lambda t: kl(t, False))(theta), rtol=1e-9, atol=1e-12)
  pi = jnp.exp(obj.policy_log_probs(inst, theta))
  assert_close(rc.recipe_field(inst, "kl_k3", theta),
               -inst.prompt_weights[:, None] * (pi - inst.reference))


def test_enumeration_and_closed_form_paths_agree():
  inst = general_instance(n_x=2, n_y=4, seed=9)
  theta, _ = thetas(inst)
  closed = rc.GroupPGConfig(group_size=4, use_std=False, kl_form="none", kl_coef=0.0)
  enum = dataclasses.replace(closed, inner_steps=2)  # clip active -> enumeration path
  assert_close(rc.recipe_field(inst, "dr_grpo", theta, theta, closed),
               rc.recipe_field(inst, "dr_grpo", theta, theta, enum), rtol=1e-10, atol=1e-13)


def test_too_many_groups_is_refused():
  inst = general_instance(n_x=1, n_y=12, seed=1)
  with pytest.raises(ValueError, match="multisets"):
    rc.recipe_field(inst, "grpo", obj.initial_logits(inst),
                    config=rc.GroupPGConfig(group_size=16))
  with pytest.raises(ValueError, match="not known"):
    rc.recipe_field(inst, "nope", obj.initial_logits(inst))
  with pytest.raises(rc.ConfigError, match="takes a GroupPGConfig"):
    rc.recipe_field(inst, "grpo", obj.initial_logits(inst), config=rc.SFTConfig())


def test_padding_is_respected():
  inst = general_instance(n_x=2, n_y=3, seed=6, levels=[-1.0, 1.0])
  padded = pad_instance(inst, 3, 5)
  theta = obj.initial_logits(inst) + 0.3
  theta_p = jnp.zeros((3, 5)).at[:2, :3].set(theta)
  for name in ("grpo", "ppo_clip", "hpt", "luffy", "srft", "relift"):
    f = rc.recipe_field(inst, name, theta)
    fp = rc.recipe_field(padded, name, theta_p)
    assert_close(fp[:2, :3], f, rtol=1e-10, atol=1e-13, err_msg=name)
    assert np.all(np.asarray(fp)[2:] == 0) and np.all(np.asarray(fp)[:, 3:] == 0)


@pytest.mark.parametrize("name", sorted(rc.RECIPES))
def test_train_recipe_regret_nonnegative(name):
  inst = general_instance(n_x=3, n_y=4, seed=13, zero_data=True)
  log_pi, traj = rc.train_recipe(inst, name, steps=40, lr=1.0)
  assert traj.sft_loss.shape == (41,) and traj.reward.shape == (41,)
  assert_close(traj.sft_loss[-1], obj.sft_loss(inst, log_pi))
  assert_close(traj.reward[-1], obj.reward(inst, log_pi))
  start = obj.policy_log_probs(inst, obj.initial_logits(inst))
  assert_close(traj.sft_loss[0], obj.sft_loss(inst, start))
  assert float(fr.decoupling_regret(inst, log_pi)) >= -1e-10


def test_train_recipe_compiles_once_and_moves_as_expected():
  inst = general_instance(n_x=3, n_y=4, seed=14)
  before = rc.train._train._cache_size()
  _, t1 = rc.train_recipe(inst, "dr_grpo", steps=30, lr=0.5)
  _, t2 = rc.train_recipe(inst, "dr_grpo", steps=30, lr=0.25)
  assert rc.train._train._cache_size() == before + 1
  assert float(t1.reward[-1]) > float(t2.reward[-1]) > float(t1.reward[0])
  # SFT drives the loss down to L(d); PPO with K inner steps moves further per outer step.
  _, sft = rc.train_recipe(inst, "sft", steps=400, lr=5.0)
  assert float(sft.sft_loss[-1]) < float(sft.sft_loss[0])
  _, ppo1 = rc.train_recipe(inst, "ppo_clip", 10, 0.5, rc.PPOClipConfig(inner_steps=1))
  _, ppo4 = rc.train_recipe(inst, "ppo_clip", 10, 0.5, rc.PPOClipConfig(inner_steps=4))
  assert float(ppo4.reward[-1]) > float(ppo1.reward[-1])


def test_relift_buffer_fires_on_failed_prompts():
  # Prompt 0 almost never succeeds under ρ: its rollouts all fail, the buffer fills, SFT fires.
  d = [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]
  ref = [[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]]
  r = [[-1.0, 1.0, -1.0], [1.0, -1.0, -1.0]]
  inst = make_instance([0.5, 0.5], d, r, 0.5, reference=ref)
  rl_only = rc.ReLIFTConfig(sft_lr_ratio=0.0)
  _, with_sft = rc.train_recipe(inst, "relift", 30, 0.5)
  _, without = rc.train_recipe(inst, "relift", 30, 0.5, rl_only)
  assert float(with_sft.sft_loss[-1]) < float(without.sft_loss[-1]) - 1e-3
  # The amortised exact field has the SFT drift (B/S) w (1 − p)^n (d − π).
  theta = obj.initial_logits(inst)
  diff = rc.recipe_field(inst, "relift", theta) - rc.recipe_field(inst, "relift", theta,
                                                                  config=rl_only)
  pi = jnp.exp(obj.policy_log_probs(inst, theta))
  p = jnp.sum(jnp.where(inst.reward > 0, pi, 0.0), -1)
  sft_dir = (inst.data - pi) + 0.001 * obj.entropy_grad(pi, jnp.log(pi))
  expected = inst.prompt_weights[:, None] * ((1 - p) ** 8)[:, None] * sft_dir
  assert_close(diff, expected, rtol=1e-10, atol=1e-13)


def test_compositions_table():
  counts, log_coef = rc.compositions(4, 3)
  assert counts.shape == (15, 3) and np.all(counts.sum(1) == 4)
  assert len({tuple(c) for c in counts}) == 15
  np.testing.assert_allclose(np.exp(log_coef).sum(), 3.0 ** 4)


def test_figure_smoke():
  import matplotlib.figure

  from nondecoupling.figures import recipes as fig_recipes
  assert callable(fig_recipes.FIGURES["recipes_frontier"])
  fig = fig_recipes.frontier_with_recipes(recipes=("sft", "dr_grpo", "relift"), steps=20,
                                          betas=[0.1, 1.0], lambdas=[0.0, 1.0, 10.0])
  assert isinstance(fig, matplotlib.figure.Figure)
  labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert any("relift" in s for s in labels) and any("RL path" in s for s in labels)
  assert "this project's D4" in fig.axes[0].get_title()
  import matplotlib.pyplot as plt
  plt.close(fig)


def test_sampled_training_follows_the_exact_field():
  """train_recipe_sampled (the fallback when enumeration is infeasible) tracks train_recipe."""
  inst = general_instance(n_x=2, n_y=4, seed=11, levels=[-1.0, 0.0, 0.5, 1.0])
  exact_pi, exact_traj = rc.train_recipe(inst, "grpo", 40, 0.5)
  sampled_pi, sampled_traj = rc.train_recipe_sampled(inst, "grpo", 40, 0.5, jax.random.PRNGKey(3),
                                                     samples=4096)
  assert np.max(np.abs(np.exp(exact_pi) - np.exp(sampled_pi))) < 0.02
  assert abs(float(exact_traj.reward[-1]) - float(sampled_traj.reward[-1])) < 0.01
  assert float(sampled_traj.reward[-1]) > float(sampled_traj.reward[0])  # it does train


def test_exact_group_field_refuses_infeasible_enumeration():
  inst = general_instance(n_x=1, n_y=16, seed=12)  # 16 distinct rewards, group 8
  with pytest.raises(rc.InfeasibleExactField):
    rc.train_recipe(inst, "grpo", 1, 0.1)

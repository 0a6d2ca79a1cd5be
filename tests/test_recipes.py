"""Fusion recipes as exact fields (THEORY.md F; fusion-methods.md).

References used here, each independent of the code under test: brute-force enumeration of every
draw of a recipe's estimator; a NumPy transcription of verl's ``compute_grpo_outcome_advantage``;
autodiff of verl's clamped ``low_var_kl`` formula; stationary points solved by hand (closed forms
or scipy's brentq on hand-derived scalar equations); a list simulation of ReLIFT's buffer and a
NumPy re-implementation of its training loop; Monte-Carlo means within a few standard errors.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings, strategies as st
from scipy import optimize, stats

from nondecoupling.theory import flows, objectives as obj, recipes as rc
from nondecoupling.theory.instance import make_instance, pad_instance
from nondecoupling.theory.recipes.groups import DENSE_LEVELS, level_values, read_levels
from nondecoupling.verify import compare as compare_module
from nondecoupling.verify.cli import main
from nondecoupling.verify.compare import recipe_configs

EPS = 1e-6  # verl's std offset, the configs' default


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


def clamp_instance():
  """One prompt where verl's k3 clamps bind: ρ/π = 60 on y0 and π/ρ > 3e5 on y2, y3."""
  ref = [[0.6, 0.4 - 2e-6, 1e-6, 1e-6]]
  inst = make_instance([1.0], [[0.1, 0.4, 0.3, 0.2]], [[1.0, 0.0, 0.5, -1.0]], 0.5, reference=ref)
  theta = jnp.log(jnp.asarray([[0.01, 0.3, 0.39, 0.3]]))
  return inst, theta


def thetas(inst, seed=1, scale=0.8):
  rng = np.random.default_rng(seed)
  theta_old = obj.initial_logits(inst)
  theta = theta_old + jnp.asarray(rng.normal(size=inst.shape) * scale)
  return theta, theta_old


def softmax(theta):
  z = np.exp(theta - theta.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


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


def verl_advantages(scores, use_std, eps=EPS):
  """verl ``compute_grpo_outcome_advantage`` for one group, transcribed: a group of one has mean 0
  and std 1; otherwise torch.mean and torch.std (unbiased)."""
  scores = np.asarray(scores, np.float64)
  if len(scores) == 1:
    mean, std = 0.0, 1.0
  else:
    mean, std = scores.mean(), scores.std(ddof=1)
  return (scores - mean) / (std + eps) if use_std else scores - mean


# ---------------------------------------------------------------- exact field = every draw

SMALL_CONFIGS = [
    ("sft", rc.SFTConfig(coef=0.7)),
    ("reinforce", rc.ReinforceConfig()),
    ("grpo", rc.GroupPGConfig(group_size=4)),
    ("grpo", rc.GroupPGConfig(group_size=3, inner_steps=3, clip_low=0.1, clip_high=0.3)),
    ("grpo", rc.GroupPGConfig(group_size=1)),                                   # group of one
    ("grpo", rc.GroupPGConfig(group_size=1, use_std=False, kl_form="k3_loss_unclamped")),
    ("grpo", rc.GroupPGConfig(group_size=3, inner_steps=2, clip_low=1e-9, clip_high=1e-9)),
    ("grpo_reverse_kl", rc.GroupPGConfig(group_size=3, kl_form="reverse", kl_coef=0.3)),
    ("dr_grpo", rc.GroupPGConfig(group_size=4, use_std=False, kl_coef=0.0, kl_form="none")),
    ("dr_grpo", rc.GroupPGConfig(group_size=3, use_std=False, kl_coef=0.2, inner_steps=2)),
    ("ppo_clip", rc.PPOClipConfig(samples=2)),
    ("ppo_clip", rc.PPOClipConfig(samples=1, clip_low=1e-9, clip_high=5.0)),
    ("kl_k3", rc.KLConfig(coef=0.5, samples=2)),
    ("kl_reverse", rc.KLConfig(form="reverse", samples=2)),
    ("hpt", rc.HPTConfig(n_rollouts=4, switch_gate=1)),
    ("hpt", rc.HPTConfig(n_rollouts=3, switch_gate=0, use_std=True)),
    ("hpt", rc.HPTConfig(n_rollouts=1, switch_gate=0)),                          # group of one
    ("hpt", rc.HPTConfig(n_rollouts=2, switch_gate=2, rl_aggregation="group_mean")),  # γ = n
    ("luffy", rc.LUFFYConfig(n_on=3)),
    ("luffy", rc.LUFFYConfig(n_on=3, use_std=True, shaping_gamma=None)),
    ("luffy", rc.LUFFYConfig(n_on=1, shaping_gamma=1e-8, rl_aggregation="group_mean")),
    ("srft", rc.SRFTConfig(n_on=3, entropy_coef=0.01)),
    ("srft", rc.SRFTConfig(n_on=3, use_std=False, demo_clip=1e-9)),
    ("srft", rc.SRFTConfig(n_on=1)),
    ("srft_hpt", rc.SRFTConfig(n_on=3, use_std=False, demo_clip=None, shaping_gamma=0.1)),
    ("relift", rc.ReLIFTConfig(n_rollouts=4, batch_prompts=64)),
    ("relift", rc.ReLIFTConfig(n_rollouts=3, use_std=True, rl_aggregation="group_mean")),
    ("relift", rc.ReLIFTConfig(n_rollouts=1, batch_prompts=1, buffer_size=1)),    # group of one
]
BINARY_CASES = [SMALL_CONFIGS[i] for i in (2, 4, 15, 16, 19, 22, 26)]
CASES = ([(n, c, "general") for n, c in SMALL_CONFIGS] + [(n, c, "binary") for n, c in BINARY_CASES]
         + [("grpo", rc.GroupPGConfig(group_size=3), "clamp"),
            ("kl_k3", rc.KLConfig(samples=2), "clamp")])


@pytest.mark.parametrize("name,cfg,kind", CASES, ids=lambda v: str(v)[:48])
def test_exact_field_equals_enumeration_of_every_draw(name, cfg, kind):
  if kind == "clamp":
    inst, theta = clamp_instance()
    theta_old = theta + jnp.asarray([[0.0, 0.1, -0.1, 0.2]])
  else:
    levels = None if kind == "general" else [-1.0, 1.0]
    inst = general_instance(seed=3, levels=levels, zero_data=(kind == "binary"))
    theta, theta_old = thetas(inst)
  if getattr(cfg, "inner_steps", 2) == 1:
    theta_old = theta  # one inner step: the rollout policy is the current one
  exact = rc.recipe_field(inst, name, theta, theta_old, cfg)
  assert np.all(np.isfinite(np.asarray(exact)))
  assert_close(exact, brute_force_field(inst, name, theta, theta_old, cfg), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["grpo", "hpt", "luffy", "srft"])
def test_default_configs_against_enumeration(name):
  # Published group sizes (7-8) with three responses and three reward levels.
  inst = general_instance(seed=5, levels=[0.0, 0.5, 1.0])
  theta, theta_old = thetas(inst, scale=0.0)
  cfg = rc.RECIPES[name].config
  exact = rc.recipe_field(inst, name, theta, theta_old, cfg)
  assert_close(exact, brute_force_field(inst, name, theta, theta_old, cfg), rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- the k3 clamp and the group of one

def test_k3_clamp_is_verls_formula():
  """The clamped field is E_{y∼π_old} ∇ of verl's low_var_kl value (autodiff of the transcribed
  formula), which differs from the unclamped field here."""
  inst, theta = clamp_instance()
  theta_old = theta + jnp.asarray([[0.0, 0.1, -0.1, 0.2]])
  pi_old = np.exp(np.asarray(obj.policy_log_probs(inst, theta_old)))[0]
  log_ref = jnp.log(inst.reference[0])

  def verl_low_var_kl(th, y):
    kl = jnp.clip(log_ref[y] - jax.nn.log_softmax(th[0])[y], -20.0, 20.0)
    return jnp.clip(jnp.exp(kl) - kl - 1.0, -10.0, 10.0)

  grads = [np.asarray(jax.grad(verl_low_var_kl)(theta, y)) for y in range(4)]
  reference = sum(pi_old[y] * grads[y] for y in range(4))
  pi = jnp.exp(obj.policy_log_probs(inst, theta))
  pi_old_j = jnp.exp(obj.policy_log_probs(inst, theta_old))
  clamped = rc.kl_k3_loss_grad(pi, pi_old_j, inst.reference)
  assert_close(clamped, reference)
  unclamped = rc.kl_k3_loss_grad(pi, pi_old_j, inst.reference, clamp=False)
  assert np.max(np.abs(np.asarray(clamped - unclamped))) > 0.1  # the clamps bind here
  # Without a binding clamp (general instance, moderate logits) the forms agree.
  inst2 = general_instance(n_x=3, n_y=4, seed=8)
  th2, _ = thetas(inst2, scale=0.3)
  k3 = rc.recipe_field(inst2, "kl_k3", th2)
  unclamped = rc.KLConfig(form="k3_loss_unclamped")
  assert_close(k3, rc.recipe_field(inst2, "kl_k3", th2, config=unclamped))


@settings(max_examples=25)
@given(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=5),
       st.booleans())
def test_sampled_group_advantage_is_verls(scores, use_std):
  adv = rc.sample_group_advantage(jnp.asarray(scores), use_std, EPS)
  assert_close(adv, verl_advantages(scores, use_std))


def test_group_of_one_field_is_reinforce():
  """G = 1: Â = r/(1 + ε) (std) or r, so GRPO's field is F_π r/(1 + ε): REINFORCE (B5 gradient)."""
  inst = general_instance(n_x=2, n_y=4, seed=4)
  theta, _ = thetas(inst)
  grad_j = np.asarray(jax.grad(lambda t: obj.reward(inst, obj.policy_log_probs(inst, t)))(theta))
  for use_std in (True, False):
    cfg = rc.GroupPGConfig(group_size=1, use_std=use_std, kl_form="none")
    scale = 1.0 / (1.0 + EPS) if use_std else 1.0
    assert_close(rc.recipe_field(inst, "grpo", theta, config=cfg), scale * grad_j)
  # HPT with one rollout and γ = 0: RL only on a success, with Â = r.
  cfg = rc.HPTConfig(n_rollouts=1, entropy_coef=0.0, sft_coef=0.0)
  pi = np.exp(np.asarray(obj.policy_log_probs(inst, theta)))
  r_pos = np.where(np.asarray(inst.reward) > 0, np.asarray(inst.reward), 0.0)
  expected = pi * r_pos - pi * np.sum(pi * r_pos, -1, keepdims=True)
  assert_close(rc.recipe_field(inst, "hpt", theta, config=cfg),
               np.asarray(inst.prompt_weights)[:, None] * expected)


def test_srft_demo_clip_binds_on_negative_demo_advantages():
  """With general rewards some demonstrations have Â_off < 0 and π(y*) < 1 − ε: the clip removes
  their gradient (the enumeration test above checks the clipped field exactly)."""
  inst = general_instance(seed=3)
  theta, _ = thetas(inst)
  clipped = rc.recipe_field(inst, "srft", theta, config=rc.SRFTConfig(n_on=3))
  unclipped = rc.recipe_field(inst, "srft", theta, config=rc.SRFTConfig(n_on=3, demo_clip=None))
  assert np.max(np.abs(np.asarray(clipped - unclipped))) > 1e-3


# ---------------------------------------------------------------- Monte-Carlo means

MC_CASES = ([(n, None, "general") for n in sorted(rc.RECIPES)]
            + [("grpo", rc.GroupPGConfig(group_size=1), "general"),
               ("kl_k3", None, "clamp"), ("grpo", rc.GroupPGConfig(group_size=3), "clamp"),
               ("hpt", rc.HPTConfig(n_rollouts=1), "general"),
               ("relift", rc.ReLIFTConfig(n_rollouts=1, buffer_size=4), "general")])


def monte_carlo_z(name, cfg, kind, n=4000, seed=7):
  """max |mean − exact| / standard error over the entries of the field, and max |exact|."""
  if kind == "clamp":
    inst, theta = clamp_instance()
    theta_old = theta
  else:
    inst = general_instance(n_x=2, n_y=4, seed=11)
    theta, theta_old = thetas(inst, seed=2, scale=0.5)
  keys = jax.random.split(jax.random.PRNGKey(seed), n)
  samples = jax.jit(jax.vmap(lambda k: rc.recipe_sample(k, inst, name, theta, theta_old, cfg)))(
      keys)
  mean = np.asarray(samples.mean(0))
  se = np.asarray(samples.std(0)) / np.sqrt(n)
  exact = np.asarray(rc.recipe_field(inst, name, theta, theta_old, cfg))
  err = np.abs(mean - exact)
  z = np.where(se > 0, err / np.where(se > 0, se, 1.0), np.where(err > 1e-12, np.inf, 0.0))
  return float(z.max()), float(np.abs(exact).max())


@pytest.mark.parametrize("name,cfg,kind", MC_CASES, ids=lambda v: str(v)[:40])
def test_monte_carlo_mean_matches_exact_field(name, cfg, kind):
  z, scale = monte_carlo_z(name, cfg, kind)
  assert z <= 5.0, z   # CLT: 5 standard errors (estimated from the samples)
  assert scale > 1e-4  # the check is not vacuous


# ---------------------------------------------------------------- binary closed forms

def brute_force_c(p, g, use_std, off=()):
  """c(p) = E[A_1 (s_1 − p)] / (p (1 − p)) over every success pattern of the G samples."""
  total = 0.0
  for s in itertools.product([0, 1], repeat=g):
    prob = np.prod([p if b else 1 - p for b in s])
    a = verl_advantages(list(s) + list(off), use_std)
    total += prob * a[0] * (s[0] - p)
  return total / (p * (1 - p))


@pytest.mark.parametrize("g", [1, 2, 4, 6])
@pytest.mark.parametrize("use_std", [False, True])
@pytest.mark.parametrize("off", [(), (1.0,)])
def test_binomial_coefficient_against_brute_force(g, use_std, off):
  for p in (0.1, 0.4, 0.85):
    c = float(rc.binomial_group_coefficient(p, g, use_std=use_std, off_rewards=off))
    assert c == pytest.approx(brute_force_c(p, g, use_std, off=off), rel=1e-10, abs=1e-12)


def test_binomial_off_advantage_and_gates():
  for g in (0, 3, 7):
    for p in (0.2, 0.7):
      brute = brute_std = 0.0
      for s in itertools.product([0, 1], repeat=g):
        prob = np.prod([p if b else 1 - p for b in s])
        brute += prob * verl_advantages(list(s) + [1.0], False)[-1]
        brute_std += prob * verl_advantages(list(s) + [1.0], True)[-1]
      assert float(rc.binomial_off_advantage(p, g)) == pytest.approx(brute, rel=1e-12)
      assert float(rc.binomial_off_advantage(p, g, use_std=True)) == pytest.approx(brute_std,
                                                                                  rel=1e-10)
  p = jnp.asarray([0.0, 0.3, 1.0])
  assert_close(rc.binomial_gate_probability(p, 8, 0, 0), (1 - p) ** 8)
  assert_close(rc.binomial_gate_probability(0.3, 8, 0, 8), 1.0)


def off_advantage_by_listing(inst, pi_old, n_on, use_std):
  """[2, Y] E[Â_off^± | y*] for every response y* as the demonstration: every draw of the n_on
  rollouts listed, verl's advantage of the group's last member."""
  r = np.asarray(inst.reward)[0]
  want = np.zeros((2, r.size))
  for draw in itertools.product(range(r.size), repeat=n_on):
    prob = np.prod(pi_old[0, list(draw)])
    for y in range(r.size) if prob > 0 else ():
      a = verl_advantages(list(r[list(draw)]) + [r[y]], use_std)[-1]
      want[:, y] += prob * np.array([max(a, 0.0), max(-a, 0.0)])
  return want


@pytest.mark.parametrize("use_std", [False, True])
@pytest.mark.parametrize("reference", [[0.5, 0.3, 0.2, 0.0], [0.5, 0.5, 0.0, 0.0]])
@pytest.mark.parametrize("rewards", [[1.0, 0.0, 0.7, -0.4], [1.0, 0.0, 1.0, 0.0]])
def test_off_policy_advantage_parts_against_every_group(use_std, reference, rewards):
  """E[Â_off^± | y*] of every response as the demonstration against listing every group. With
  the first rewards the responses off the reference's support have rewards no support response
  has (computed per response); with the second every reward is one of the support's levels
  (one enumeration per level, read back per response)."""
  from nondecoupling.theory.recipes.groups import enumerated_off_advantage

  inst = make_instance([1.0], [[0.1, 0.2, 0.3, 0.4]], [rewards], 0.5, reference=[reference])
  pi_old = np.asarray([reference]) * np.asarray([[1.3, 0.6, 1.1, 1.0]])
  pi_old /= pi_old.sum()
  pos, neg = enumerated_off_advantage(inst, jnp.asarray(pi_old), 3, 4, use_std, EPS)
  assert_close(np.stack([pos[0], neg[0]]), off_advantage_by_listing(inst, pi_old, 3, use_std))


@pytest.mark.parametrize("use_std", [False, True])
@pytest.mark.parametrize("levels", [4, DENSE_LEVELS + 2])
def test_off_policy_advantage_on_the_support_against_every_group(use_std, levels):
  """With every response on the support, the promise ``on_support`` (no fallback compiled) gives
  what listing every group gives, with few levels (read back in one unrolled pass) and with more
  than DENSE_LEVELS (the level masses one at a time, the read-back as a table)."""
  inst = make_instance([1.0], [[0.1, 0.2, 0.3, 0.4]], [[1.0, 0.0, 0.7, 1.0]], 0.5,
                       reference=[[0.4, 0.3, 0.2, 0.1]])
  pi_old = np.asarray([[0.1, 0.2, 0.3, 0.4]])
  want = off_advantage_by_listing(inst, pi_old, 3, use_std)
  for on_support in (False, True):
    pos, neg = rc.groups.enumerated_off_advantage(inst, jnp.asarray(pi_old), 3, levels, use_std,
                                                  EPS, on_support=on_support)
    assert_close(np.stack([pos[0], neg[0]]), want)


@pytest.mark.parametrize("m", [3, DENSE_LEVELS + 4])
def test_level_read_back_against_numpy_indexing(m):
  """level_values and read_levels (unrolled for a few levels, gathered or tabled for many)
  against NumPy's fancy indexing."""
  rng = np.random.default_rng(m)
  values = rng.normal(size=(2, m))
  level_of = rng.integers(0, m, size=(2, 50))
  want = np.take_along_axis(values, level_of, axis=1)
  got = jax.vmap(level_values)(jnp.asarray(level_of), jnp.asarray(values))
  np.testing.assert_array_equal(np.asarray(got), want)
  v = np.stack([rng.permutation(m) * 0.5 for _ in range(2)])         # distinct level rewards
  used = np.ones((2, m), bool)
  used[1, m - 1] = False                                               # an unused level
  r = np.take_along_axis(v, level_of, axis=1)
  r[0, :5] = 1e9                                                       # rewards of no level
  matched = (r != 1e9) & np.take_along_axis(used, level_of, axis=1)
  want = np.where(matched, np.take_along_axis(values, level_of, axis=1), 0.0)
  got = read_levels(jnp.asarray(r), jnp.asarray(v), jnp.asarray(used), jnp.asarray(values))
  np.testing.assert_array_equal(np.asarray(got), want)


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
  # HPT, 0/1 rewards: β Pr(K ≤ γ)(d − π) + n c_{>γ}(p) d_x; the RL loss sums the n = 8 samples
  # (fusion-methods.md §2; binomial sums with scipy).
  cfg = rc.HPTConfig(n_rollouts=8, switch_gate=2, entropy_coef=0.0)
  field = rc.recipe_field(inst, "hpt", theta, config=cfg)
  p_np = np.asarray(p)
  c_gate = sum(stats.binom.pmf(k, 7, p_np) * ((k + 1 > 2) * (1 - (k + 1) / 8) - (k > 2) * (-k / 8))
               for k in range(8))
  sft_w = stats.binom.cdf(2, 8, p_np)
  expected = w * (sft_w[:, None] * (inst.data - pi) + 8 * c_gate[:, None] * d_x)
  assert_close(field, expected, rtol=1e-9, atol=1e-12)
  # LUFFY, 0/1 rewards, demo always correct, summed over the 8 samples: 7 (7/8) d_x on-policy and
  # E[A_off] = 7 (1 − p)/8 on the demo, shaped by γπ/(π + γ)².
  one_hot = make_instance(inst.prompt_weights, jax.nn.one_hot(jnp.argmax(inst.reward, -1), 4),
                          inst.reward, 0.5, reference=inst.reference)
  field = rc.recipe_field(one_hot, "luffy", theta, config=rc.LUFFYConfig(entropy_coef=0.0))
  star = one_hot.data
  phi = 0.1 * pi / (pi + 0.1) ** 2
  off = (7 * (1 - p) / 8)[:, None] * jnp.sum(star * phi, -1, keepdims=True) * (star - pi)
  assert_close(field, w * (7 * (7 / 8) * d_x + off), rtol=1e-9, atol=1e-12)
  mean = rc.recipe_field(one_hot, "luffy", theta,
                         config=rc.LUFFYConfig(entropy_coef=0.0, rl_aggregation="group_mean"))
  assert_close(mean, w * (7 * (7 / 8) * d_x + off) / 8, rtol=1e-9, atol=1e-12)


def test_fields_match_gradients_of_objectives():
  inst = general_instance(n_x=3, n_y=4, seed=8)
  theta, _ = thetas(inst)
  grad_l = jax.grad(lambda t: obj.sft_loss(inst, obj.policy_log_probs(inst, t)))(theta)
  grad_j = jax.grad(lambda t: obj.reward(inst, obj.policy_log_probs(inst, t)))(theta)
  assert_close(rc.recipe_field(inst, "sft", theta), -grad_l)
  assert_close(rc.recipe_field(inst, "reinforce", theta), grad_j)
  cfg = rc.GroupPGConfig(group_size=6, use_std=False, kl_coef=0.0, kl_form="none")
  assert_close(rc.recipe_field(inst, "dr_grpo", theta, config=cfg), (1 - 1 / 6) * grad_j)

  def kl(t, forward):
    lp = obj.policy_log_probs(inst, t)
    lr = obj.safe_log(inst.reference)
    return obj.expect(inst, obj.kl_rows(lr, lp) if forward else obj.kl_rows(lp, lr))
  # As implemented (k3 loss, unclamped) the gradient is forward KL(ρ‖π); as intended, reverse.
  unclamped = rc.KLConfig(form="k3_loss_unclamped")
  assert_close(rc.recipe_field(inst, "kl_k3", theta, config=unclamped),
               -jax.grad(lambda t: kl(t, True))(theta))
  assert_close(rc.recipe_field(inst, "kl_reverse", theta),
               -jax.grad(lambda t: kl(t, False))(theta), rtol=1e-9, atol=1e-12)


def test_enumeration_and_closed_form_paths_agree():
  inst = general_instance(n_x=2, n_y=4, seed=9)
  theta, _ = thetas(inst)
  for g in (1, 4):
    closed = rc.GroupPGConfig(group_size=g, use_std=False, kl_form="none", kl_coef=0.0)
    enum = dataclasses.replace(closed, inner_steps=2)  # clip active -> enumeration path
    assert_close(rc.recipe_field(inst, "dr_grpo", theta, theta, closed),
                 rc.recipe_field(inst, "dr_grpo", theta, theta, enum), rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- stationary points solved by hand

def logit(p):
  return math.log(p / (1 - p))


def two_response(d0, q):
  """One prompt, r = (1, 0): p = π(y0) is the success probability."""
  return make_instance([1.0], [[d0, 1 - d0]], [[1.0, 0.0]], 0.5, reference=[[q, 1 - q]])


C2 = 0.5 / (1 / math.sqrt(2) + EPS)   # GRPO's c(p) for G = 2 with std (both advantages ±C2)


def _hpt_g0(p):   # n = 4, γ = 0, sft_coef 10, wrong demo: −10 p (1−p)^4 + 4 c_{>0}(p) p (1−p)
  c = sum(stats.binom.pmf(j, 3, p) * ((1 - (j + 1) / 4) + (j >= 1) * j / 4) for j in range(4))
  return -10 * p * (1 - p) ** 4 + 4 * c * p * (1 - p)


def _luffy_g0(p):  # n_on = 3, γ = 0.1, correct demo, entropy 1, summed: divided by p (1 − p)
  return 9 / 4 + 3 * (1 - p) * 0.1 / (4 * (p + 0.1) ** 2) - logit(p)


def _entropy(p):
  return -p * math.log(p) - (1 - p) * math.log(1 - p)


def _srft_g0(p):   # n_on = 1, wrong demo, std, clip 0.2 (binds for p > 0.2): divided by p
  return -0.5 * math.exp(-_entropy(p)) + (1 - p) * (0.1 * math.exp(_entropy(p)) + 1)


def _srft_hpt_g0(p):  # n_on = 1, wrong demo, no std: E[A_off] = −p/2, shaped: divided by p
  phi = 0.1 * (1 - p) / ((1 - p) + 0.1) ** 2
  return -0.5 * math.exp(-_entropy(p)) + 0.5 * p * phi + (1 - p) * (0.1 * math.exp(_entropy(p)) + 1)


def _root(f, lo=0.21, hi=0.99):
  return optimize.brentq(f, lo, hi, xtol=1e-15, rtol=1e-15)


STATIONARY = {
    "sft": (two_response(0.3, 0.5), rc.SFTConfig(), lambda: 0.3),
    "kl_k3": (two_response(0.5, 0.4), rc.KLConfig(), lambda: 0.4),
    "kl_reverse": (two_response(0.5, 0.4), rc.KLConfig(form="reverse"), lambda: 0.4),
    "grpo": (two_response(0.5, 0.3), rc.GroupPGConfig(group_size=2, kl_coef=0.3),
             lambda: ((C2 - 0.3) + math.sqrt((C2 - 0.3) ** 2 + 4 * C2 * 0.3 * 0.3)) / (2 * C2)),
    "grpo_reverse_kl": (two_response(0.5, 0.3),
                        rc.GroupPGConfig(group_size=2, kl_coef=0.3, kl_form="reverse"),
                        lambda: 1 / (1 + math.exp(-(logit(0.3) + C2 / 0.3)))),
    "dr_grpo": (two_response(0.5, 0.5), rc.GroupPGConfig(group_size=4, use_std=False,
                                                         kl_form="none", entropy_coef=0.5),
                lambda: 1 / (1 + math.exp(-1.5))),
    "ppo_clip": (two_response(0.5, 0.5), rc.PPOClipConfig(inner_steps=1, entropy_coef=0.5),
                 lambda: 1 / (1 + math.exp(-2.0))),
    "hpt": (two_response(0.0, 0.5), rc.HPTConfig(n_rollouts=4, sft_coef=10.0, entropy_coef=0.0),
            lambda: _root(_hpt_g0, 0.01, 0.99)),
    "luffy": (two_response(1.0, 0.5), rc.LUFFYConfig(n_on=3, entropy_coef=1.0),
              lambda: _root(_luffy_g0, 0.5, 0.9999)),
    "srft": (two_response(0.0, 0.5), rc.SRFTConfig(n_on=1), lambda: _root(_srft_g0)),
    "srft_hpt": (two_response(0.0, 0.5), rc.SRFTConfig(n_on=1, use_std=False, demo_clip=None,
                                                       shaping_gamma=0.1),
                 lambda: _root(_srft_hpt_g0, 0.01, 0.99)),
    # The amortised field: n (1 − 1/n) p (1 − p) = (B/S)(1 − p)^n p  ⇒  p* = 1 − S/B for n = 2.
    "relift": (two_response(0.0, 0.5), rc.ReLIFTConfig(n_rollouts=2, buffer_size=32,
                                                       entropy_coef=0.0, sft_entropy_coef=0.0),
               lambda: 0.75),
}


@pytest.mark.parametrize("name", sorted(STATIONARY))
def test_stationary_point_matches_hand_solution(name):
  inst, cfg, solve = STATIONARY[name]
  p_star = solve()

  def g0(p):
    theta = jnp.log(jnp.asarray([[p, 1 - p]]))
    g = np.asarray(rc.recipe_field(inst, name, theta, theta, cfg))[0]
    assert g[0] + g[1] == pytest.approx(0.0, abs=1e-12)
    return g[0]
  assert abs(g0(p_star)) <= 1e-10, (p_star, g0(p_star))
  below, above = g0(p_star - 0.01), g0(p_star + 0.01)  # a simple zero: the field changes sign
  assert below * above < 0 and min(abs(below), abs(above)) > 1e-5, (below, above)


def test_training_reaches_the_stationary_point_and_records_it():
  inst, cfg, solve = STATIONARY["grpo"]
  log_pi, traj = rc.train_recipe(inst, "grpo", steps=400, lr=2.0, config=cfg)
  assert float(jnp.exp(log_pi[0, 0])) == pytest.approx(solve(), abs=1e-8)
  assert traj.sft_loss.shape == (401,) and traj.reward.shape == (401,)
  assert_close(traj.sft_loss[-1], obj.sft_loss(inst, log_pi))
  assert_close(traj.reward[-1], obj.reward(inst, log_pi))
  assert_close(traj.reward[0], 0.3)  # starts at ρ


# ---------------------------------------------------------------- ReLIFT's buffer

def list_buffer(inflows, size, order):
  """The buffer as a list of (step, mass vector), newest first; yields the items taken per step."""
  queue, out = [], []
  for inflow in inflows:
    queue.insert(0, np.array(inflow, np.float64))
    taken = np.zeros(len(inflow))
    if sum(q.sum() for q in queue) >= size:
      need = size
      for q in (queue if order == "newest_first" else queue[::-1]):
        take = min(q.sum(), need)
        if take > 0:
          taken += q * (take / q.sum())
          q *= 1 - take / q.sum()
          need -= take
    out.append((taken, sum(q.sum() for q in queue)))
  return out


@jax.jit
def _buffer_steps(inflows, size, newest):
  def step(buf, inflow):
    buf = rc.buffer_push(buf, inflow)
    t_new, b_new, _ = rc.buffer_take(buf, size, "newest_first")
    t_old, b_old, _ = rc.buffer_take(buf, size, "oldest_first")
    taken, buf = jnp.where(newest, t_new, t_old), jnp.where(newest, b_new, b_old)
    return buf, (taken, jnp.sum(buf))
  return jax.lax.scan(step, jnp.zeros((12, 3)), inflows)[1]


@settings(max_examples=40)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=3, max_size=3),
                min_size=1, max_size=12),
       st.sampled_from([0.5, 1.0, 3.0, 4.0, 7.5]), st.sampled_from(rc.BUFFER_ORDERS))
def test_buffer_matches_a_list_simulation(inflows, size, order):
  inflows = inflows + [[0.0, 0.0, 0.0]] * (12 - len(inflows))   # one shape: one compile
  taken, left = _buffer_steps(jnp.asarray(inflows), size, order == "newest_first")
  for t, (want, want_left) in enumerate(list_buffer(inflows, size, order)):
    assert_close(taken[t], want, atol=1e-12)
    assert_close(left[t], want_left, atol=1e-12)


def test_buffer_consumes_newest_first_and_one_slot_is_proportional():
  buf = rc.buffer_push(rc.buffer_push(jnp.zeros((4, 2)), jnp.asarray([3.0, 0.0])),
                       jnp.asarray([0.0, 2.0]))
  taken, rest, fired = rc.buffer_take(buf, 3.0)
  assert bool(fired) and np.asarray(taken).tolist() == [1.0, 2.0]     # both new items, one old
  assert np.asarray(rest).sum(0).tolist() == [2.0, 0.0]
  one = rc.buffer_push(rc.buffer_push(jnp.zeros((1, 2)), jnp.asarray([3.0, 0.0])),
                       jnp.asarray([0.0, 2.0]))
  assert_close(rc.buffer_take(one, 3.0)[0], [3.0 * 3 / 5, 2.0 * 3 / 5])  # the proportional rule


def relift_numpy(inst, cfg, steps, lr):
  """ReLIFT's training loop in NumPy: RL step (no std, summed), then the list buffer and SFT."""
  w, d, r = (np.asarray(a) for a in (inst.prompt_weights, inst.data, inst.reward))
  theta = np.log(np.asarray(inst.reference))
  n, size = cfg.n_rollouts, cfg.buffer_size

  def ent_grad(pi):
    return -pi * (np.log(pi) + (-(pi * np.log(pi)).sum(-1, keepdims=True)))

  queue = []
  for _ in range(steps):
    pi = softmax(theta)
    b = (1 - 1 / n) * (r - (pi * r).sum(-1, keepdims=True))
    rl = n * (pi * b - pi * (pi * b).sum(-1, keepdims=True)) + cfg.entropy_coef * ent_grad(pi)
    p_fail = 1 - (pi * (r > cfg.success_threshold)).sum(-1)
    theta = theta + lr * w[:, None] * rl
    queue.insert(0, cfg.batch_prompts * w * p_fail ** n)
    if sum(q.sum() for q in queue) >= size:
      need, taken = size, np.zeros(len(w))
      for q in (queue if cfg.buffer_order == "newest_first" else queue[::-1]):
        take = min(q.sum(), need)
        if take > 0:
          taken += q * (take / q.sum())
          q *= 1 - take / q.sum()
          need -= take
      pi = softmax(theta)
      sft = (d - pi) + cfg.sft_entropy_coef * ent_grad(pi)
      theta = theta + lr * cfg.sft_lr_ratio * (taken / size)[:, None] * sft
  return np.log(softmax(theta))


@pytest.mark.parametrize("order", ["newest_first", "oldest_first"])
def test_relift_training_matches_a_numpy_simulation_of_the_queue(order):
  d = [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]]
  ref = [[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.6, 0.2, 0.2]]
  r = [[-1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [0.0, 0.0, 1.0]]
  inst = make_instance([0.3, 0.3, 0.4], d, r, 0.5, reference=ref)
  cfg = rc.ReLIFTConfig(n_rollouts=3, batch_prompts=16, buffer_size=7, buffer_order=order,
                        sft_lr_ratio=2.0, buffer_slots=64)
  log_pi, _ = rc.train_recipe(inst, "relift", 40, 0.7, cfg)
  assert_close(log_pi, relift_numpy(inst, cfg, 40, 0.7), rtol=1e-9, atol=1e-11)
  other = dataclasses.replace(cfg, buffer_order="oldest_first" if order == "newest_first"
                              else "newest_first")
  other_pi, _ = rc.train_recipe(inst, "relift", 40, 0.7, other)
  assert np.max(np.abs(np.asarray(log_pi - other_pi))) > 1e-4  # the order matters here


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


# ---------------------------------------------------------------- options: rules and defaults

BAD_OPTIONS = [
    (rc.SFTConfig, "coef", float("nan"), "a finite number"),
    (rc.ReinforceConfig, "baseline", 1, "True or False"),
    (rc.GroupPGConfig, "group_size", 0, "a whole number >= 1"),
    (rc.GroupPGConfig, "use_std", "yes", "True or False"),
    (rc.GroupPGConfig, "eps", 0.0, "> 0"),
    (rc.GroupPGConfig, "clip_low", -0.1, "> 0"),
    (rc.GroupPGConfig, "clip_high", float("inf"), "> 0"),
    (rc.GroupPGConfig, "inner_steps", 0, ">= 1"),
    (rc.GroupPGConfig, "kl_coef", float("inf"), "a finite number"),
    (rc.GroupPGConfig, "kl_form", "k2", "one of k3_loss"),
    (rc.GroupPGConfig, "entropy_coef", float("nan"), "a finite number"),
    (rc.GroupPGConfig, "reward_levels", 0, ">= 1 or None"),
    (rc.PPOClipConfig, "clip_low", 0.0, "> 0"),
    (rc.PPOClipConfig, "clip_high", 0.0, "> 0"),
    (rc.PPOClipConfig, "inner_steps", 2.5, "a whole number"),
    (rc.PPOClipConfig, "samples", 0, ">= 1"),
    (rc.PPOClipConfig, "entropy_coef", float("inf"), "finite"),
    (rc.KLConfig, "coef", float("nan"), "finite"),
    (rc.KLConfig, "form", "k1", "one of"),
    (rc.KLConfig, "samples", -1, ">= 1"),
    (rc.HPTConfig, "n_rollouts", 0, ">= 1"),
    (rc.HPTConfig, "switch_gate", 9, "in [0, 8]"),
    (rc.HPTConfig, "sft_coef", float("inf"), "finite"),
    (rc.HPTConfig, "rl_coef", float("nan"), "finite"),
    (rc.HPTConfig, "use_std", None, "True or False"),
    (rc.HPTConfig, "eps", -1.0, "> 0"),
    (rc.HPTConfig, "entropy_coef", float("nan"), "finite"),
    (rc.HPTConfig, "success_threshold", float("nan"), "finite"),
    (rc.HPTConfig, "rl_aggregation", "token_mean", "group_sum, group_mean"),
    (rc.HPTConfig, "reward_levels", -2, ">= 1"),
    (rc.LUFFYConfig, "n_on", 0, ">= 1"),
    (rc.LUFFYConfig, "shaping_gamma", 0.0, "> 0 or None"),
    (rc.LUFFYConfig, "use_std", 0, "True or False"),
    (rc.LUFFYConfig, "eps", 0.0, "> 0"),
    (rc.LUFFYConfig, "entropy_coef", float("inf"), "finite"),
    (rc.LUFFYConfig, "rl_aggregation", "sum", "one of"),
    (rc.LUFFYConfig, "reward_levels", 0, ">= 1"),
    (rc.SRFTConfig, "n_on", 0, ">= 1"),
    (rc.SRFTConfig, "sft_coef", float("nan"), "finite"),
    (rc.SRFTConfig, "rl_pos_coef", float("inf"), "finite"),
    (rc.SRFTConfig, "use_std", "true", "True or False"),
    (rc.SRFTConfig, "eps", 0.0, "> 0"),
    (rc.SRFTConfig, "demo_clip", 0.0, "> 0 or None"),
    (rc.SRFTConfig, "shaping_gamma", -0.1, "> 0 or None"),
    (rc.SRFTConfig, "entropy_coef", float("nan"), "finite"),
    (rc.SRFTConfig, "success_threshold", float("inf"), "finite"),
    (rc.SRFTConfig, "reward_levels", 0, ">= 1"),
    (rc.ReLIFTConfig, "n_rollouts", 0, ">= 1"),
    (rc.ReLIFTConfig, "use_std", 1.0, "True or False"),
    (rc.ReLIFTConfig, "eps", 0.0, "> 0"),
    (rc.ReLIFTConfig, "rl_coef", float("nan"), "finite"),
    (rc.ReLIFTConfig, "entropy_coef", float("inf"), "finite"),
    (rc.ReLIFTConfig, "batch_prompts", 0, ">= 1"),
    (rc.ReLIFTConfig, "buffer_size", 0, ">= 1"),
    (rc.ReLIFTConfig, "sft_lr_ratio", -0.5, ">= 0"),
    (rc.ReLIFTConfig, "sft_entropy_coef", float("nan"), "finite"),
    (rc.ReLIFTConfig, "success_threshold", float("nan"), "finite"),
    (rc.ReLIFTConfig, "rl_aggregation", "mean", "one of"),
    (rc.ReLIFTConfig, "buffer_order", "lifo", "newest_first, oldest_first"),
    (rc.ReLIFTConfig, "buffer_slots", 0, ">= 1"),
    (rc.ReLIFTConfig, "reward_levels", 0, ">= 1"),
]


@pytest.mark.parametrize("cls,field,value,rule", BAD_OPTIONS, ids=lambda v: str(v)[:30])
def test_every_option_breaking_its_rule_is_refused_in_one_line(cls, field, value, rule):
  with pytest.raises(rc.ConfigError) as e:
    cls(**{field: value})
  msg = str(e.value)
  assert msg.startswith(f"{cls.__name__}.{field} is ") and rule in msg and "\n" not in msg


def test_every_option_has_a_rule_under_test():
  classes = {type(r.config) for r in rc.RECIPES.values()}
  covered = {(c, f) for c, f, _, _ in BAD_OPTIONS}
  missing = [(c.__name__, f.name) for c in classes for f in dataclasses.fields(c)
             if (c, f.name) not in covered]
  assert not missing


def test_reward_levels_below_the_instance_are_refused():
  inst = general_instance(seed=3)   # three distinct rewards
  with pytest.raises(rc.ConfigError, match="reward_levels is 2, expected at least"):
    rc.recipe_field(inst, "grpo", obj.initial_logits(inst),
                    config=rc.GroupPGConfig(reward_levels=2))


def test_published_defaults():
  """The defaults of fusion-methods.md (§2 HPT, §3 GRPO, §4 LUFFY, §5 SRFT, §6 ReLIFT)."""
  cfg = {name: rc.RECIPES[name].config for name in rc.RECIPES}
  assert (cfg["grpo"].group_size, cfg["grpo"].use_std, cfg["grpo"].eps, cfg["grpo"].clip_low,
          cfg["grpo"].kl_coef, cfg["grpo"].kl_form) == (8, True, 1e-6, 0.2, 0.04, "k3_loss")
  assert (cfg["hpt"].n_rollouts, cfg["hpt"].switch_gate, cfg["hpt"].sft_coef, cfg["hpt"].use_std,
          cfg["hpt"].entropy_coef, cfg["hpt"].rl_aggregation) == (8, 0, 1.0, False, 0.001,
                                                                   "group_sum")
  assert (cfg["luffy"].n_on, cfg["luffy"].shaping_gamma, cfg["luffy"].use_std,
          cfg["luffy"].entropy_coef, cfg["luffy"].rl_aggregation) == (7, 0.1, False, 0.001,
                                                                       "group_sum")
  assert (cfg["srft"].sft_coef, cfg["srft"].rl_pos_coef, cfg["srft"].use_std,
          cfg["srft"].demo_clip, cfg["srft"].shaping_gamma) == (0.5, 0.1, True, 0.2, None)
  assert (cfg["srft_hpt"].use_std, cfg["srft_hpt"].demo_clip,
          cfg["srft_hpt"].shaping_gamma) == (False, None, 0.1)
  assert (cfg["relift"].n_rollouts, cfg["relift"].buffer_size, cfg["relift"].batch_prompts,
          cfg["relift"].use_std, cfg["relift"].rl_aggregation,
          cfg["relift"].buffer_order) == (8, 128, 128, False, "group_sum", "newest_first")


def test_recipe_options_from_text():
  configs = recipe_configs(["grpo.group_size=1", "luffy.shaping_gamma=none", "grpo.use_std=false",
                            "hpt.switch_gate=9", "hpt.n_rollouts=10",
                            "relift.buffer_order=oldest_first", "grpo.kl_form=k3_loss_unclamped",
                            "srft.demo_clip=0.3"])
  assert (configs["grpo"].group_size, configs["grpo"].use_std, configs["grpo"].kl_form) == (
      1, False, "k3_loss_unclamped")
  assert configs["luffy"].shaping_gamma is None and configs["hpt"].switch_gate == 9
  assert configs["relift"].buffer_order == "oldest_first" and configs["srft"].demo_clip == 0.3
  assert configs["dr_grpo"] == rc.RECIPES["dr_grpo"].config  # untouched recipes keep defaults


@pytest.mark.parametrize("option,needle", [
    ("grpo.group_size=0", "GroupPGConfig.group_size is 0, expected a whole number >= 1"),
    ("grpo.group_size=two", "expected a whole number"),
    ("luffy.shaping_gamma=-1", "LUFFYConfig.shaping_gamma is -1.0, expected a finite number > 0"),
    ("grpo.nope=1", "has no option 'nope'"),
    ("sft.coef=1", "compare runs no recipe 'sft'"),
    ("grpo", "malformed"),
    ("hpt.switch_gate=9", "in [0, 8]"),
])
def test_bad_recipe_option_exits_2_with_one_line(option, needle, tmp_path, capsys):
  p = tmp_path / "inst.json"  # a valid tabular instance: the options are read against its kind
  p.write_text(json.dumps({"beta": 0.5, "prompt_weights": [1.0], "data": [[0.5, 0.5]],
                           "reward": [[1.0, 0.0]]}))
  assert main(["compare", str(p), "--recipe-option", option]) == 2
  cap = capsys.readouterr()
  lines = cap.err.strip().splitlines()
  assert cap.out == "" and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_compare_runs_the_configs_given(tmp_path, capsys, monkeypatch):
  """The options reach the recipes ``compare`` trains (the pipelines' flows, tested elsewhere, are
  replaced by the exact SFT-then-RL end point here to keep this test fast)."""
  monkeypatch.setattr(compare_module, "flows", type("Flows", (), {
      "time_unit": staticmethod(flows.time_unit), "PIPELINE_NAMES": (),
      "sft_then_rl_endpoint": staticmethod(flows.sft_then_rl_endpoint)}))
  p = tmp_path / "inst.json"
  p.write_text(json.dumps({"beta": 0.5, "prompt_weights": [0.4, 0.6],
                           "data": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
                           "reward": [[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]]}))
  argv = ["compare", str(p), "--json", "--recipe-steps", "3",
          "--recipe-option", "grpo.group_size=1", "--recipe-option", "relift.sft_lr_ratio=0"]
  assert main(argv) == 0
  out = json.loads(capsys.readouterr().out)
  rows = {r["name"]: r for r in out["recipes"]}
  assert rows["grpo"]["config"]["group_size"] == 1 and rows["relift"]["config"]["sft_lr_ratio"] == 0
  assert rows["hpt"]["config"]["n_rollouts"] == 8
  assert out["defaults"]["recipe_options"] == ["grpo.group_size=1", "relift.sft_lr_ratio=0"]


# ---------------------------------------------------------------- guards, padding, training

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

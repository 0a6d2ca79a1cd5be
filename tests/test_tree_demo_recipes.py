"""The demonstration and hint/prefix recipes on trees (LUFFY, SRFT, HPT, ReLIFT, UFT, Prefix-RFT,
BREAD): exact fields against brute force, estimators against fields, the atomic case, configs.

The brute force is an independent NumPy derivation: it walks each prompt's host-side tree
(:class:`PromptTree`), lists every response, and enumerates explicitly every ordered group, every
demonstration, every hint length and prefix (with probabilities from ``math.comb`` and
``scipy.special.betainc``) and every anchor event, summing per-token score terms e_a − π(·|s)
prefix by prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from conftest import assert_close
from hypothesis import given, settings, strategies as st

from nondecoupling.figures.tree_hints import (
  DEFAULT_SETTINGS,
  example_tree,
  hint_outcomes,
  hints_against_frontier,
)
from nondecoupling.theory.instance import make_instance
from nondecoupling.theory.recipes.base import ConfigError
from nondecoupling.theory.recipes.hpt import HPTConfig
from nondecoupling.theory.recipes.luffy import LUFFYConfig
from nondecoupling.theory.recipes.registry import recipe_field
from nondecoupling.theory.recipes.relift import ReLIFTConfig
from nondecoupling.theory.recipes.srft import SRFTConfig
from nondecoupling.theory.tree.atomic import tree_from_atomic
from nondecoupling.theory.tree.build import PromptTree, build_tree
from nondecoupling.theory.tree.instance import Bucket
from nondecoupling.theory.tree.recipes.bread import TreeBREADConfig
from nondecoupling.theory.tree.recipes.demo_family import DEMO_TREE_RECIPES
from nondecoupling.theory.tree.recipes.hpt import TreeHPTConfig
from nondecoupling.theory.tree.recipes.luffy import TreeLUFFYConfig
from nondecoupling.theory.tree.recipes.prefix_rft import TreePrefixRFTConfig
from nondecoupling.theory.tree.recipes.registry import TREE_RECIPES
from nondecoupling.theory.tree.recipes.relift import TreeReLIFTConfig
from nondecoupling.theory.tree.recipes.srft import TreeSRFTConfig
from nondecoupling.theory.tree.recipes.uft import TreeUFTConfig

K, EOS, T = 3, 0, 3
BUCKET = Bucket(2, K, (1, 2, 4))


# ----------------------------------------------------------------------------------------------
# Tiny random trees and the brute force
# ----------------------------------------------------------------------------------------------

def random_prompt(rng) -> PromptTree:
  ref = {}

  def walk(s):
    row = rng.uniform(0.2, 1.0, K)
    if len(s) == 1 and rng.uniform() < 0.5:
      row[rng.integers(1, K)] = 0.0           # a missing child: unbalanced trees
    ref[s] = row / row.sum()
    for a in range(1, K):
      if row[a] > 0 and len(s) + 1 < T:
        walk(s + (a,))
  walk(())
  leaves = sorted(s + (a,) for s, row in ref.items() for a in range(K)
                  if row[a] > 0 and (a == EOS or len(s) + 1 == T))
  long = [y for y in leaves if len(y) >= 2]
  demo = [long[rng.integers(len(long))], leaves[rng.integers(len(leaves))]]
  data = {demo[0]: 1.0} if demo[0] == demo[1] else {demo[0]: 0.7, demo[1]: 0.3}
  good = {y for y in leaves if rng.uniform() < 0.3} | {demo[0]}
  return PromptTree(K, EOS, T, ref, data, lambda y, good=frozenset(good): float(y in good))


def random_case(seed: int):
  rng = np.random.default_rng(seed)
  prompts = [random_prompt(rng) for _ in range(2)]
  w = rng.uniform(0.3, 1.0, 2)
  tree, index = build_tree(prompts, w / w.sum(), 0.5, bucket=BUCKET)
  logits = [{s: rng.normal(0.0, 0.8, K) for s in p.reference} for p in prompts]
  theta = [np.zeros(lv.reference.shape) for lv in tree.levels]
  for x, idx in enumerate(index):
    for s, (t, row) in idx.items():
      theta[t][x, row] = logits[x][s]
  return tree, index, prompts, w / w.sum(), logits, tuple(jnp.asarray(a) for a in theta)


class Brute:
  """One prompt, its responses and a policy, in NumPy."""

  def __init__(self, p: PromptTree, logits: dict):
    self.p = p
    self.rows = {}
    for s, ref in p.reference.items():
      sup = np.asarray(ref) > 0
      z = np.where(sup, logits[s], -np.inf)
      e = np.where(sup, np.exp(z - z[sup].max()), 0.0)
      self.rows[s] = e / e.sum()
    self.leaves = sorted(s + (a,) for s, ref in p.reference.items() for a in range(K)
                         if ref[a] > 0 and (a == EOS or len(s) + 1 == T))
    self.pi = {y: math.prod(self.rows[y[:t]][y[t]] for t in range(len(y))) for y in self.leaves}
    self.r = {y: p.reward(y) for y in self.leaves}
    self.grad = {s: np.zeros(K) for s in p.reference}

  def ent(self, s):
    q = self.rows[s]
    return -sum(v * math.log(v) for v in q if v > 0)

  def mean_ent(self, y):
    return sum(self.ent(y[:t]) for t in range(len(y))) / len(y)

  def token(self, s, a, c):
    e = np.zeros(K)
    e[a] = 1.0
    self.grad[s] += c * (e - self.rows[s])

  def path(self, y, c, start=0):
    for t in range(start, len(y)):
      self.token(y[:t], y[t], c)

  def ent_node(self, s, c):
    q = self.rows[s]
    logq = np.log(np.where(q > 0, q, 1.0))
    self.grad[s] += c * (-q * (logq + self.ent(s)))

  def ent_path(self, y, c, start=0):
    for t in range(start, len(y)):
      self.ent_node(y[:t], c)

  def below(self, s):
    return [y for y in self.leaves if y[:len(s)] == s and len(y) > len(s)]

  def groups(self, n, s=()):
    """Ordered groups of n leaves drawn from π(·|s), with their probabilities."""
    cand = self.below(s)
    reach = math.prod(self.rows[s[:t]][s[t]] for t in range(len(s)))
    for g in itertools.product(cand, repeat=n):
      yield g, math.prod(self.pi[y] / reach for y in g)

  def data(self):
    return [(tuple(y), m) for y, m in self.p.data.items() if m > 0]


def advantages(rewards, use_std, eps):
  r = np.asarray(rewards, float)
  if r.size == 1:
    return r / (1 + eps) if use_std else r
  a = r - r.mean()
  return a / (r.std(ddof=1) + eps) if use_std else a


def compare(tree, index, w, brutes, field):
  for x, (b, idx) in enumerate(zip(brutes, index)):
    for s, (t, row) in idx.items():
      assert_close(np.asarray(field[t][x, row]), w[x] * b.grad[s], err_msg=f"prompt {x} node {s}")


# ---- the brute-force fields, one per recipe ------------------------------------------------------

def bf_luffy(b: Brute, cfg: TreeLUFFYConfig):
  a = (cfg.n_on + 1 if cfg.rl_aggregation == "group_sum" else 1) / (cfg.n_on + 1)
  phi = (lambda p: p) if cfg.shaping_gamma is None else (
      lambda p: cfg.shaping_gamma * p / (p + cfg.shaping_gamma) ** 2)
  for g, pg in b.groups(cfg.n_on):
    for ys, pd in b.data():
      adv = advantages([b.r[y] for y in g] + [b.r[ys]], cfg.use_std, cfg.eps)
      for y, ai in zip(g, adv):
        b.path(y, pg * pd * a * ai)
      for t in range(len(ys)):
        b.token(ys[:t], ys[t], pg * pd * a * adv[-1] * phi(b.rows[ys[:t]][ys[t]]))
  for y in b.leaves:
    b.ent_path(y, b.pi[y] * cfg.entropy_coef)


def bf_srft(b: Brute, cfg: TreeSRFTConfig):
  def h(y, t):
    return b.mean_ent(y) if cfg.entropy_weighting == "sequence_mean" else b.ent(y[:t])
  for g, pg in b.groups(cfg.n_on):
    for ys, pd in b.data():
      adv = advantages([b.r[y] for y in g] + [b.r[ys]], cfg.use_std, cfg.eps)[-1]
      for t in range(len(ys)):
        ratio = b.rows[ys[:t]][ys[t]]
        clipped = cfg.demo_clip is not None and (
            (adv > 0 and ratio > 1 + cfg.demo_clip) or (adv < 0 and ratio < 1 - cfg.demo_clip))
        phi = ratio if cfg.shaping_gamma is None else (
            cfg.shaping_gamma * ratio / (ratio + cfg.shaping_gamma) ** 2)
        c = cfg.sft_coef * math.exp(-h(ys, t)) + (0.0 if clipped else adv * phi)
        b.token(ys[:t], ys[t], pg * pd * c)
      for y in g:
        s = b.r[y] > cfg.success_threshold
        for t in range(len(y)):
          wt = cfg.rl_pos_coef * math.exp(h(y, t)) if s else -1.0
          b.token(y[:t], y[t], pg * pd * wt / cfg.n_on)
  for y in b.leaves:
    b.ent_path(y, b.pi[y] * cfg.entropy_coef)


def bf_hpt(b: Brute, cfg: TreeHPTConfig):
  scale = cfg.rl_coef * (cfg.n_rollouts if cfg.rl_aggregation == "group_sum" else 1)
  for g, pg in b.groups(cfg.n_rollouts):
    k = sum(b.r[y] > cfg.success_threshold for y in g)
    if k <= cfg.switch_gate:
      for ys, pd in b.data():
        b.path(ys, pg * pd * cfg.sft_coef)
    else:
      adv = advantages([b.r[y] for y in g], cfg.use_std, cfg.eps)
      for y, ai in zip(g, adv):
        b.path(y, pg * scale * ai / cfg.n_rollouts)
    for y in g:
      b.ent_path(y, pg * cfg.entropy_coef / cfg.n_rollouts)


def bf_relift(b: Brute, cfg: TreeReLIFTConfig):
  scale = cfg.rl_coef * (cfg.n_rollouts if cfg.rl_aggregation == "group_sum" else 1)
  sft = cfg.sft_lr_ratio * cfg.batch_prompts / cfg.buffer_size
  for g, pg in b.groups(cfg.n_rollouts):
    adv = advantages([b.r[y] for y in g], cfg.use_std, cfg.eps)
    for y, ai in zip(g, adv):
      b.path(y, pg * scale * ai / cfg.n_rollouts)
      b.ent_path(y, pg * cfg.entropy_coef / cfg.n_rollouts)
    if cfg.sft_schedule == "amortised" and all(b.r[y] <= cfg.success_threshold for y in g):
      for ys, pd in b.data():
        b.path(ys, pg * pd * sft)
        b.ent_path(ys, pg * pd * sft * cfg.sft_entropy_coef)


def bf_uft(b: Brute, cfg: TreeUFTConfig, p: float):
  scale = cfg.n_rollouts if cfg.rl_aggregation == "group_sum" else 1
  for ys, pd in b.data():
    big_l = len(ys)
    num = min(cfg.max_segments, big_l)
    for l in range(num + 1):
      pl = math.comb(num, l) * p ** l * (1 - p) ** (num - l)
      h = round(l * big_l / num)
      for t in range(h):
        b.token(ys[:t], ys[t], pd * pl * cfg.sft_coef)
      if h == big_l:
        continue
      for g, pg in b.groups(cfg.n_rollouts, ys[:h]):
        adv = advantages([b.r[y] for y in g], cfg.use_std, cfg.eps)
        for y, ai in zip(g, adv):
          c = pd * pl * pg * scale / cfg.n_rollouts
          b.path(y, c * ai, start=h)
          b.ent_path(y, c * cfg.entropy_coef, start=h)
          for t in range(h, len(y)):
            s = y[:t]
            b.grad[s] += c * cfg.kl_coef * (np.asarray(b.p.reference[s]) - b.rows[s])


def bf_prefix_rft(b: Brute, cfg: TreePrefixRFTConfig, m: float):
  a = (cfg.n_on + 1 if cfg.rl_aggregation == "group_sum" else 1) / (cfg.n_on + 1)
  alpha, beta = cfg.concentration * m, cfg.concentration * (1 - m)
  for g, pg in b.groups(cfg.n_on):
    for ys, pd in b.data():
      big_l = len(ys)
      for l in range(big_l):
        pl = (scipy.special.betainc(alpha, beta, (l + 1) / big_l)
              - scipy.special.betainc(alpha, beta, l / big_l))
        ents = [b.ent(ys[:t]) for t in range(l)]
        order = sorted(range(l), key=lambda t: (-ents[t], t))
        keep = set(order[:math.ceil(cfg.entropy_keep * l - 1e-9)])
        for yh, ph in b.groups(1, ys[:l]):
          c = pg * pd * pl * ph * a
          adv = advantages([b.r[y] for y in g] + [b.r[yh[0]]], False, cfg.eps)
          for y, ai in zip(g, adv):
            b.path(y, c * ai)
          for t in range(len(yh[0])):
            y = yh[0]
            if t >= l:
              b.token(y[:t], y[t], c * adv[-1])
            elif t in keep:
              phi = b.rows[y[:t]][y[t]] if cfg.prefix_form == "ratio" else 1.0
              b.token(y[:t], y[t], c * adv[-1] * phi)
  for y in b.leaves:
    b.ent_path(y, b.pi[y] * cfg.entropy_coef)


def bf_bread(b: Brute, cfg: TreeBREADConfig):
  scale = cfg.n_rollouts if cfg.rl_aggregation == "group_sum" else 1

  def run(s, reach):
    """Trains the groups below s that have a success; returns the all-fail probability."""
    fail = 0.0
    for g, pg in b.groups(cfg.n_rollouts, s):
      if not any(b.r[y] > cfg.success_threshold for y in g):
        fail += pg
        continue
      adv = advantages([b.r[y] for y in g], cfg.use_std, cfg.eps)
      for y, ai in zip(g, adv):
        b.path(y, reach * pg * scale * ai / cfg.n_rollouts, start=len(s))
    return fail
  root_fail = run((), 1.0)
  for ys, pd in b.data():
    reach = pd * root_fail
    for l in range(1, len(ys)):
      reach *= run(ys[:l], reach)


# ----------------------------------------------------------------------------------------------
# Exact fields against brute force
# ----------------------------------------------------------------------------------------------

CASES = [
    ("luffy", TreeLUFFYConfig(n_on=2), lambda b, c: bf_luffy(b, c)),
    ("luffy", TreeLUFFYConfig(n_on=2, use_std=True, shaping_gamma=None, reward_levels=2,
                              rl_aggregation="group_mean"), lambda b, c: bf_luffy(b, c)),
    ("srft", TreeSRFTConfig(n_on=2, reward_levels=2, entropy_coef=0.01),
     lambda b, c: bf_srft(b, c)),
    ("srft", TreeSRFTConfig(n_on=2, entropy_weighting="token", use_std=False, demo_clip=0.4,
                            shaping_gamma=0.1), lambda b, c: bf_srft(b, c)),
    ("hpt", TreeHPTConfig(n_rollouts=3, switch_gate=1), lambda b, c: bf_hpt(b, c)),
    ("hpt", TreeHPTConfig(n_rollouts=2, use_std=True, reward_levels=2),
     lambda b, c: bf_hpt(b, c)),
    ("relift", TreeReLIFTConfig(n_rollouts=3, batch_prompts=8, buffer_size=4),
     lambda b, c: bf_relift(b, c)),
    ("relift", TreeReLIFTConfig(n_rollouts=2, sft_schedule="buffer", use_std=True,
                                reward_levels=2), lambda b, c: bf_relift(b, c)),
    ("uft", TreeUFTConfig(n_rollouts=2, hint_prob=0.6, sft_coef=0.3, kl_coef=0.2,
                          entropy_coef=0.1, reward_levels=2), lambda b, c: bf_uft(b, c, 0.6)),
    ("uft", TreeUFTConfig(n_rollouts=3, use_std=False, step=100, max_segments=2),
     lambda b, c: bf_uft(b, c, 0.05 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3)))),
    ("prefix_rft", TreePrefixRFTConfig(n_on=2, ratio_mean=0.6, entropy_keep=0.5),
     lambda b, c: bf_prefix_rft(b, c, 0.6)),
    ("prefix_rft", TreePrefixRFTConfig(n_on=1, step=100, prefix_form="log_likelihood",
                                       entropy_coef=0.05),
     lambda b, c: bf_prefix_rft(b, c, 0.05 + 0.45 * (1 + math.cos(math.pi * 0.2)))),
    ("bread", TreeBREADConfig(n_rollouts=2, reward_levels=2), lambda b, c: bf_bread(b, c)),
    ("bread", TreeBREADConfig(n_rollouts=3, use_std=False), lambda b, c: bf_bread(b, c)),
]

_FIELD = {name: jax.jit(rec.field, static_argnums=2) for name, rec in DEMO_TREE_RECIPES.items()}


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in
                                                         enumerate(CASES)])
@settings(max_examples=2)
@given(seed=st.integers(0, 2 ** 20))
def test_exact_field_equals_brute_force(case, seed):
  name, cfg, brute = CASES[case]
  tree, index, prompts, w, logits, theta = random_case(seed)
  field = _FIELD[name](tree, theta, cfg)
  brutes = [Brute(p, lg) for p, lg in zip(prompts, logits)]
  for b in brutes:
    brute(b, cfg)
  compare(tree, index, w, brutes, field)


# ----------------------------------------------------------------------------------------------
# Estimators: the mean of n sampled calls converges to the exact field as 1/√n
# ----------------------------------------------------------------------------------------------

SLOPE_CASES = {
    "luffy": TreeLUFFYConfig(n_on=2),
    "srft": TreeSRFTConfig(n_on=2, reward_levels=2, entropy_coef=0.01),
    "hpt": TreeHPTConfig(n_rollouts=3, switch_gate=1),
    "relift": TreeReLIFTConfig(n_rollouts=2, batch_prompts=8, buffer_size=4),
    "uft": TreeUFTConfig(n_rollouts=2, hint_prob=0.6, sft_coef=0.3, kl_coef=0.2,
                         entropy_coef=0.1, reward_levels=2),
    "prefix_rft": TreePrefixRFTConfig(n_on=2, ratio_mean=0.6, entropy_keep=0.5),
    "bread": TreeBREADConfig(n_rollouts=2, reward_levels=2),
}
CHUNK, CHUNKS, SEEDS = 256, 64, 6          # n = 2^8 … 2^14 as nested means of 256-call chunks


def _flat(levels):
  return jnp.concatenate([a.reshape(-1) for a in levels])


@pytest.mark.parametrize("name", sorted(SLOPE_CASES))
def test_estimator_mean_converges_as_one_over_sqrt_n(name):
  tree, _, _, _, _, theta = random_case(7)
  recipe, cfg = DEMO_TREE_RECIPES[name], SLOPE_CASES[name]
  exact = np.asarray(_flat(_FIELD[name](tree, theta, cfg)))
  chunk = jax.jit(lambda keys: jax.lax.map(
      lambda k: _flat(recipe.estimate(tree, theta, cfg, k, CHUNK)), keys))
  keys = jax.random.split(jax.random.PRNGKey(2026), SEEDS * CHUNKS)
  means = np.asarray(chunk(keys)).reshape(SEEDS, CHUNKS, -1)
  ns, errs = [], []
  for j in range(7):
    est = means[:, :2 ** j].mean(axis=1)
    ns.append(CHUNK * 2 ** j)
    errs.append(np.sqrt(np.mean(np.sum((est - exact) ** 2, axis=-1))))
  slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
  assert -0.65 <= slope <= -0.35, (name, slope, errs)


# ----------------------------------------------------------------------------------------------
# Depth 1: the atomic recipes
# ----------------------------------------------------------------------------------------------

ATOMIC_PAIRS = [
    ("luffy", TreeLUFFYConfig(n_on=3, use_std=True, reward_levels=4), LUFFYConfig),
    ("luffy", TreeLUFFYConfig(n_on=2, shaping_gamma=None, rl_aggregation="group_mean"),
     LUFFYConfig),
    ("srft", TreeSRFTConfig(n_on=3, reward_levels=4, entropy_coef=0.01), SRFTConfig),
    ("srft", TreeSRFTConfig(n_on=2, use_std=False, demo_clip=None, shaping_gamma=0.1,
                            entropy_weighting="token"), SRFTConfig),
    ("hpt", TreeHPTConfig(n_rollouts=4, switch_gate=1), HPTConfig),
    ("hpt", TreeHPTConfig(n_rollouts=3, use_std=True, reward_levels=4), HPTConfig),
    ("relift", TreeReLIFTConfig(n_rollouts=3, batch_prompts=8, buffer_size=4), ReLIFTConfig),
]


def _atomic_config(tree_cfg, cls):
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{f.name: getattr(tree_cfg, f.name) for f in dataclasses.fields(tree_cfg)
                if f.name in names})


@settings(max_examples=3)
@given(seed=st.integers(0, 2 ** 20))
def test_depth_one_equals_the_atomic_recipes(seed):
  rng = np.random.default_rng(seed)
  data = rng.uniform(0.0, 1.0, (2, 4)) * (rng.uniform(size=(2, 4)) < 0.7)
  data[:, 0] += 0.1
  reward = rng.choice([0.0, 1.0, 2.0], size=(2, 4))
  ref = rng.uniform(0.2, 1.0, (2, 4))
  inst = make_instance([0.4, 0.6], data / data.sum(1, keepdims=True), reward, 0.5,
                       reference=ref / ref.sum(1, keepdims=True))
  theta = jnp.asarray(rng.normal(0.0, 1.0, (2, 4)))
  tree = tree_from_atomic(inst)
  for name, tree_cfg, cls in ATOMIC_PAIRS:
    want = recipe_field(inst, name, theta, config=_atomic_config(tree_cfg, cls))
    got = _FIELD[name](tree, (theta[:, None, :],), tree_cfg)[0][:, 0, :]
    assert_close(got, want, err_msg=name)


# ----------------------------------------------------------------------------------------------
# ReLIFT's buffer hook, configs, registry
# ----------------------------------------------------------------------------------------------

def test_relift_buffer_hook_runs_one_sft_step_on_the_taken_items():
  tree, index, prompts, w, logits, theta = random_case(3)
  cfg = TreeReLIFTConfig(n_rollouts=2, batch_prompts=4000, buffer_size=4, sft_schedule="buffer",
                         sft_lr_ratio=0.5)
  recipe = TREE_RECIPES["relift"]
  new, buf = recipe.update(tree, theta, theta, recipe.init(tree, theta, cfg), 0.1, cfg)
  brutes = [Brute(p, lg) for p, lg in zip(prompts, logits)]
  inflow = np.array([cfg.batch_prompts * wx * sum(pg for g, pg in b.groups(2) if all(
      b.r[y] <= 0 for y in g)) for wx, b in zip(w, brutes)])
  assert_close(float(np.sum(buf)), inflow.sum() - cfg.buffer_size)
  for x, (b, idx) in enumerate(zip(brutes, index)):
    for ys, pd in b.data():
      b.path(ys, pd)
      b.ent_path(ys, pd * cfg.sft_entropy_coef)
    share = inflow[x] / inflow.sum()
    for s, (t, row) in idx.items():
      assert_close(np.asarray(new[t][x, row] - theta[t][x, row]),
                   0.1 * cfg.sft_lr_ratio * share * b.grad[s], err_msg=f"{x} {s}")


BAD_CONFIGS = [
    (TreeLUFFYConfig, {"n_on": 0}, "n_on"),
    (TreeLUFFYConfig, {"shaping_gamma": -0.1}, "shaping_gamma"),
    (TreeSRFTConfig, {"entropy_weighting": "tokens"}, "entropy_weighting"),
    (TreeHPTConfig, {"switch_gate": 9}, "switch_gate"),
    (TreeReLIFTConfig, {"sft_schedule": "eager"}, "sft_schedule"),
    (TreeUFTConfig, {"p_high": 1.5}, "p_high"),
    (TreeUFTConfig, {"hint_prob": 1.2}, "hint_prob"),
    (TreeUFTConfig, {"max_segments": 0}, "max_segments"),
    (TreePrefixRFTConfig, {"entropy_keep": 0.0}, "entropy_keep"),
    (TreePrefixRFTConfig, {"ratio_mean": 1.0}, "ratio_mean"),
    (TreePrefixRFTConfig, {"prefix_form": "nll"}, "prefix_form"),
    (TreeBREADConfig, {"n_rollouts": 0}, "n_rollouts"),
    (TreeBREADConfig, {"use_std": "yes"}, "use_std"),
]


@pytest.mark.parametrize("cls, kwargs, field", BAD_CONFIGS)
def test_bad_config_is_refused_with_one_line(cls, kwargs, field):
  with pytest.raises(ConfigError) as err:
    cls(**kwargs)
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(f"{cls.__name__}.{field} is "), msg


def test_registry_holds_the_demo_recipes_under_their_names():
  assert {"luffy", "srft", "hpt", "relift", "uft", "prefix_rft", "bread"} <= set(TREE_RECIPES)
  for name, recipe in DEMO_TREE_RECIPES.items():
    assert TREE_RECIPES[name] is recipe and recipe.name == name


def test_tree_hints_figure_draws_trained_end_points_against_the_frontier():
  tree = example_tree()
  settings_ = tuple((n, p, v[:1], make) for n, p, v, make in DEFAULT_SETTINGS[:1])
  out = hint_outcomes(tree, settings_, steps=3, lr=0.5)
  assert len(out) == 1
  assert np.all(np.isfinite([out[0]["sft_loss"], out[0]["reward"], out[0]["regret"]]))
  assert out[0]["regret"] >= 0.0
  fig = hints_against_frontier(tree, out)
  assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2

"""Benchmark of the token-level engine (THEORY.md part G) on the complete k = 8, T = 5 tree.

(a) The complete tree with k = 8 tokens (one EOS) and maximum length T = 5: 2,801 internal nodes
    and 19,608 leaves per prompt, batched over 256 prompts in one TreeInstance (vmap-free: the
    prompt axis is part of every array). For each engine function: compile time and run time
    (median of 5 runs after compiling), and time per node (run time / (256 × 2,801)).
(c) The same complete tree against the obvious NumPy implementation vectorised over sequences
    (bench/numpy_sequences.py: every leaf's path, log-probabilities summed over positions):
    L, J, KL(π‖ρ) and log Z from the logits, both sides; the floor is one float64 exp pass over
    every slot of the tree; and peak memory at several depths (max RSS growth of a fresh process
    for JAX, the high-water mark reset after compiling, tracemalloc for NumPy) against the number of nodes.
(d) Every recipe's exact expected field on the same tree with the verifiable reward 1{r > 0}
    (over chunks of prompts): compile and run time, ns per node; Dr.GRPO and PPO-clip (closed-form
    sequence weights at θ = θ_old) also against NumPy/SciPy over sequences
    (bench/numpy_recipe_fields.py: one sparse path-incidence product for the whole batch) with
    their disagreement (UFT, Prefix-RFT and BREAD over sequences × positions:
    bench/numpy_start_fields.py; DAPO's group of 16 over 9 levels by convolving the others'
    successes and total length, in NumPy vectorised over prompts).
(b) The worst disagreement with brute force: 300 random trees (every family, depth ≤ 4) whose
    sequences are enumerated in NumPy from the level arrays (an independent walk), comparing
    L, J, KL(π‖ρ) and log Z (relative error) and the leaf probabilities of π and π*_β (absolute).

Run: ``python -m bench.bench_tree``. Prints the numbers and writes bench/out/bench_tree.json.
Nothing is asserted.
"""

from __future__ import annotations

import time

import numpy as np

from bench import steady_times, warm_up, write_result

K, DEPTH, PROMPTS = 8, 5, 256


def _engine_functions():
  from nondecoupling.theory.tree import bellman, fixed_points, kl, objectives as obj, policy, sft

  def policy_and_leaves(tree, theta):
    lp = policy.policy_log_probs(tree, theta)
    return policy.leaf_log_probs(tree, lp)

  def objectives(tree, theta):
    lp = policy.policy_log_probs(tree, theta)
    return (obj.sft_loss(tree, lp), obj.reward(tree, lp), obj.kl(tree, lp),
            obj.regularized_reward(tree, lp))

  return {
      "policy + sequence probabilities": policy_and_leaves,
      "L, J, KL (chain rule), J_beta": objectives,
      "soft Bellman (G1)": lambda tree, theta: bellman.soft_bellman(tree),
      "token-mean optimum + excess (G2)": lambda tree, theta: (sft.token_mean_optimum(tree),
                                                              sft.token_mean_excess(tree)),
      "grad J_beta (closed form)": lambda tree, theta: obj.rl_grad(
          tree, policy.policy_log_probs(tree, theta)),
      "k1-in-reward + k3-in-loss fields (G3)": lambda tree, theta: (
          kl.reward_kl_field(tree, policy.policy_log_probs(tree, theta)),
          kl.k3_loss_field(tree, policy.policy_log_probs(tree, theta))),
      "k2 fixed point (G4, closed form)": lambda tree, theta: fixed_points.closed_form_fixed_point(
          tree, "k2_loss"),
      "k3 fixed point (G4, Newton)": lambda tree, theta: fixed_points.closed_form_fixed_point(
          tree, "k3_loss"),
  }


def complete_tree_timings():
  import jax
  import jax.numpy as jnp

  from nondecoupling.theory.tree.instance import n_leaves, n_nodes
  from nondecoupling.verify.tree_families import complete_tree

  t0 = time.perf_counter()
  tree = complete_tree(K, DEPTH, PROMPTS)
  build = time.perf_counter() - t0
  tree = jax.device_put(tree)
  rng = np.random.default_rng(0)
  theta = tuple(jnp.asarray(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tree.levels)
  nodes, leaves = int(n_nodes(tree)[0]), int(n_leaves(tree)[0])
  rows = {}
  for name, fn in _engine_functions().items():
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(tree, theta).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(tree, theta))
    runs = []
    for _ in range(5):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(tree, theta))
      runs.append(time.perf_counter() - t0)
    run = float(np.median(runs))
    rows[name] = {"compile_s": compile_s, "run_s": run,
                  "ns_per_node": 1e9 * run / (PROMPTS * nodes)}
    print(f"  {name:40s} compile {compile_s:6.2f} s   run {1e3 * run:8.1f} ms   "
          f"{rows[name]['ns_per_node']:7.1f} ns/node", flush=True)
  return {"k": K, "T": DEPTH, "prompts": PROMPTS, "internal_nodes_per_prompt": nodes,
          "leaves_per_prompt": leaves, "build_s": build, "functions": rows}


def _levels_numpy(tree):
  return [{k: np.asarray(getattr(lv, k)) for k in ("leaf", "internal", "reference", "data",
                                                   "reward", "child")} for lv in tree.levels]


def _exact_engine(chunked=True):
  """L, J, KL(π‖ρ), log Z from the logits; over chunks of prompts (the library's
  ``map_prompt_chunks``, what a user evaluating many prompts calls) unless ``chunked`` is False."""
  from nondecoupling.theory.tree import bellman, objectives as obj, policy
  from nondecoupling.theory.tree.chunks import map_prompt_chunks

  def exact(tree, theta):
    lp = policy.policy_log_probs(tree, theta)
    return {"L": obj.sft_loss(tree, lp), "J": obj.reward(tree, lp), "KL": obj.kl(tree, lp),
            "log_Z": bellman.log_partition(tree)}
  if not chunked:
    return exact
  return lambda tree, theta: map_prompt_chunks(exact, tree, theta)


def _median_seconds(fn, reps):
  """Median seconds of ``reps`` calls after :func:`~bench.warm_up`."""
  warm_up(fn)
  runs = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - t0)
  return float(np.median(runs))


def sequences_vs_engine(depth=DEPTH, prompts=PROMPTS):
  """(c): the engine against NumPy over sequences on the complete tree, and the exp floor."""
  import jax
  import jax.numpy as jnp

  from bench.numpy_sequences import sequence_paths, sequence_quantities
  from nondecoupling.theory.tree.instance import n_nodes
  from nondecoupling.verify.tree_families import complete_tree

  tree = jax.device_put(complete_tree(K, depth, prompts))
  rng = np.random.default_rng(0)
  theta = tuple(jnp.asarray(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tree.levels)
  levels = _levels_numpy(tree)
  theta_np = [np.asarray(t) for t in theta]
  w, beta = np.asarray(tree.prompt_weights), float(tree.beta)
  t0 = time.perf_counter()
  flat, mask = sequence_paths(levels)
  paths_s = time.perf_counter() - t0
  engine = jax.jit(_exact_engine()).lower(tree, theta).compile()
  ours = jax.tree.map(np.asarray, engine(tree, theta))
  engine_s = _median_seconds(lambda: jax.block_until_ready(engine(tree, theta)), 5)
  whole = jax.jit(_exact_engine(chunked=False)).lower(tree, theta).compile()
  whole_s = _median_seconds(lambda: jax.block_until_ready(whole(tree, theta)), 5)
  theirs = sequence_quantities(levels, theta_np, w, beta, flat, mask)
  numpy_s = _median_seconds(lambda: sequence_quantities(levels, theta_np, w, beta, flat, mask), 3)
  slots = jnp.concatenate([t.reshape(prompts, -1) for t in theta], axis=1)
  floor = jax.jit(lambda a: jnp.sum(jnp.exp(a)))
  jax.block_until_ready(floor(slots))
  floor_s = _median_seconds(lambda: jax.block_until_ready(floor(slots)), 5)
  worst = {k: float(np.max(np.abs(ours[k] - theirs[k]) / np.maximum(1.0, np.abs(theirs[k]))))
           for k in theirs}
  nodes = int(n_nodes(tree)[0]) * prompts
  out = {"prompts": prompts, "internal_nodes": nodes, "sequences_per_prompt": len(flat),
         "slots": int(slots.size), "engine_s": engine_s, "engine_one_pass_s": whole_s, "numpy_sequences_s": numpy_s,
         "numpy_paths_s": paths_s, "speedup": numpy_s / engine_s, "floor_exp_pass_s": floor_s,
         "engine_ns_per_node": 1e9 * engine_s / nodes,
         "floor_ns_per_node": 1e9 * floor_s / nodes, "engine_over_floor": engine_s / floor_s,
         "max_relative_disagreement": worst}
  print(f"  exact L, J, KL, log Z: engine {1e3 * engine_s:.1f} ms, NumPy over sequences "
        f"{1e3 * numpy_s:.1f} ms ({out['speedup']:.1f}×; all prompts in one pass "
        f"{1e3 * whole_s:.1f} ms); floor (exp pass) {1e3 * floor_s:.2f} ms; "
        f"{out['engine_ns_per_node']:.1f} ns/node vs {out['floor_ns_per_node']:.2f}", flush=True)
  return out


# Recipes with a NumPy/SciPy baseline over sequences (bench/numpy_recipe_fields.py).
NUMPY_RECIPES = ("dr_grpo", "ppo_clip", "grpo", "dapo", "hpt", "relift", "luffy", "srft", "uft",
                 "prefix_rft", "bread")


def verifiable(tree):
  """The tree with the verifiable reward 1{r > 0} (two reward levels, as a correctness check)."""
  import dataclasses

  import jax.numpy as jnp
  return dataclasses.replace(tree, levels=tuple(
      dataclasses.replace(lv, reward=jnp.where(lv.reward > 0, 1.0, 0.0)) for lv in tree.levels))


def _numpy_baseline(name, cfg, levels, theta, w, flat, mask):
  """A no-argument call of ``name``'s NumPy/SciPy field over sequences, with ``cfg``'s options."""
  from bench.numpy_recipe_fields import (
    hpt_field,
    luffy_field,
    recipe_field,
    relift_field,
    srft_field,
  )
  from bench.numpy_start_fields import bread_field, prefix_rft_field, uft_field
  from nondecoupling.theory.tree.recipes.prefix_rft import prefix_ratio_mean
  from nondecoupling.theory.tree.recipes.uft import uft_hint_probability

  if name == "hpt":
    if cfg.use_std or cfg.rl_aggregation != "group_sum" or cfg.success_threshold != 0.0:
      raise ValueError("the HPT baseline covers the published defaults only")
    return lambda: hpt_field(levels, theta, w, flat, mask, cfg.n_rollouts, cfg.switch_gate,
                             cfg.sft_coef, cfg.rl_coef, cfg.entropy_coef)
  if name == "luffy":
    if cfg.use_std or cfg.rl_aggregation != "group_sum":
      raise ValueError("the LUFFY baseline covers the published defaults only")
    return lambda: luffy_field(levels, theta, w, flat, mask, cfg.n_on, cfg.shaping_gamma,
                               cfg.entropy_coef)
  if name == "srft":
    if (not cfg.use_std or cfg.demo_clip is None or cfg.shaping_gamma is not None
        or cfg.success_threshold != 0.0 or cfg.entropy_weighting != "sequence_mean"):
      raise ValueError("the SRFT baseline covers the published defaults only")
    return lambda: srft_field(levels, theta, w, flat, mask, cfg.n_on, cfg.sft_coef,
                              cfg.rl_pos_coef, cfg.eps, cfg.demo_clip, cfg.entropy_coef)
  if name == "relift":
    if (cfg.use_std or cfg.rl_aggregation != "group_sum" or cfg.success_threshold != 0.0
        or cfg.sft_schedule != "amortised"):
      raise ValueError("the ReLIFT baseline covers the published defaults only")
    return lambda: relift_field(levels, theta, w, flat, mask, cfg.n_rollouts, cfg.rl_coef,
                                cfg.entropy_coef, cfg.batch_prompts, cfg.buffer_size,
                                cfg.sft_lr_ratio, cfg.sft_entropy_coef)
  if name == "bread":
    if not cfg.use_std or cfg.success_threshold != 0.0 or cfg.rl_aggregation != "group_sum":
      raise ValueError("the BREAD baseline covers the published defaults only")
    return lambda: bread_field(levels, theta, w, flat, mask, cfg.n_rollouts, cfg.eps)
  if name == "uft":
    if not cfg.use_std or cfg.success_threshold != 0.0 or cfg.rl_aggregation != "group_sum":
      raise ValueError("the UFT baseline covers the published defaults only")
    return lambda: uft_field(levels, theta, w, flat, mask, cfg.n_rollouts,
                             uft_hint_probability(cfg), cfg.max_segments, cfg.sft_coef,
                             cfg.kl_coef, cfg.entropy_coef, cfg.eps)
  if name == "prefix_rft":
    if (cfg.prefix_form != "ratio" or cfg.entropy_coef != 0.0
        or cfg.rl_aggregation != "group_sum"):
      raise ValueError("the Prefix-RFT baseline covers the published defaults only")
    return lambda: prefix_rft_field(levels, theta, w, flat, mask, cfg.n_on,
                                    prefix_ratio_mean(cfg), cfg.concentration, cfg.entropy_keep)
  if name == "dapo":
    if (not cfg.use_std or cfg.loss_agg_mode != "token-mean" or not cfg.dynamic_sampling
        or cfg.kl_coef != 0.0):
      raise ValueError("the DAPO baseline covers the published defaults only")
    return lambda: recipe_field(name, levels, theta, w, flat, mask, cfg.group_size, eps=cfg.eps)
  size = getattr(cfg, "group_size", 1)
  kw = dict(kl_coef=cfg.kl_coef, eps=cfg.eps) if name == "grpo" else {}
  return lambda: recipe_field(name, levels, theta, w, flat, mask, size, **kw)


def _chunked_field(field, cfg):
  """``field(tree, θ, cfg)`` over chunks of prompts. DAPO's dynamic-sampling factor 1/E_w[q]
  couples the prompts (a chunk's own E_w[q] is not the tree's): the chunks compute the field
  without it and E_w[q], a sum over prompts, and the factor is applied once."""
  import dataclasses

  from nondecoupling.theory.tree.chunks import map_prompt_chunks
  from nondecoupling.theory.tree.objectives import expect
  from nondecoupling.theory.tree.policy import policy_log_probs
  from nondecoupling.theory.tree.recipes.advantages import informative_probability

  if not getattr(cfg, "dynamic_sampling", False):
    return lambda t, th: map_prompt_chunks(lambda tc, thc: field(tc, thc, cfg), t, th)
  inner = dataclasses.replace(cfg, dynamic_sampling=False)
  classes = cfg.reward_classes if cfg.reward_classes is not None else cfg.levels

  def parts(tc, thc):
    q = expect(tc, informative_probability(tc, policy_log_probs(tc, thc), cfg.group_size,
                                           classes))
    return field(tc, thc, inner), q

  def run(t, th):
    g, q = map_prompt_chunks(parts, t, th)
    return tuple(a / q for a in g)
  return run


def recipe_fields(prompts=PROMPTS, depth=DEPTH):
  """Every recipe's exact expected field on the complete tree with a 0/1 reward (over chunks of
  prompts), and those in ``NUMPY_RECIPES`` against NumPy/SciPy over sequences."""
  import jax
  import jax.numpy as jnp

  from bench.numpy_sequences import sequence_paths
  from nondecoupling.theory.recipes.groups import InfeasibleExactField
  from nondecoupling.theory.tree.instance import n_nodes
  from nondecoupling.theory.tree.recipes.registry import TREE_RECIPES
  from nondecoupling.verify.tree_families import complete_tree

  tree = jax.device_put(verifiable(complete_tree(K, depth, prompts)))
  rng = np.random.default_rng(0)
  theta = tuple(jnp.asarray(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tree.levels)
  levels = _levels_numpy(tree)
  theta_np = [np.asarray(t) for t in theta]
  w = np.asarray(tree.prompt_weights)
  flat, mask = sequence_paths(levels)
  nodes = int(n_nodes(tree)[0]) * prompts
  rows = {}
  for name, recipe in TREE_RECIPES.items():
    try:
      cfg = recipe.prepare(tree, recipe.config)
      fn = jax.jit(_chunked_field(recipe.field, cfg))
      t0 = time.perf_counter()
      compiled = fn.lower(tree, theta).compile()
      compile_s = time.perf_counter() - t0
    except InfeasibleExactField as e:
      rows[name] = {"status": f"infeasible exactly (the estimator is used): {e}"}
      print(f"  {name:12s} infeasible exactly: {e}", flush=True)
      continue
    ours = [np.asarray(a) for a in compiled(tree, theta)]
    ours_s = steady_times(lambda: jax.block_until_ready(compiled(tree, theta)), 7)
    run = float(np.median(ours_s))
    row = {"status": "ok", "compile_s": compile_s, "run_s": run, "run_fastest_s": min(ours_s),
           "calls": len(ours_s), "ns_per_node": 1e9 * run / nodes}
    if name in NUMPY_RECIPES:
      baseline = _numpy_baseline(name, cfg, levels, theta_np, w, flat, mask)
      theirs = baseline()
      numpy_s = steady_times(baseline, 7)
      row["numpy_sequences_s"] = float(np.median(numpy_s))
      row["numpy_sequences_fastest_s"] = min(numpy_s)
      row["speedup"] = row["numpy_sequences_s"] / run
      row["speedup_fastest"] = row["numpy_sequences_fastest_s"] / row["run_fastest_s"]
      scale = max(float(np.max(np.abs(a))) for a in theirs)
      row["max_disagreement_over_max_entry"] = max(
          float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)) / scale
    rows[name] = row
    extra = (f", NumPy over sequences {1e3 * row['numpy_sequences_s']:.1f} ms "
             f"({row['speedup']:.1f}x; fastest calls "
             f"{1e3 * row['run_fastest_s']:.1f} / {1e3 * row['numpy_sequences_fastest_s']:.1f} ms, "
             f"{row['speedup_fastest']:.1f}x; disagreement "
             f"{row['max_disagreement_over_max_entry']:.1e})" if "speedup" in row else "")
    print(f"  {name:12s} compile {compile_s:6.2f} s  run {1e3 * run:8.1f} ms median "
          f"({row['ns_per_node']:.0f} ns/node){extra}", flush=True)
  return {"prompts": prompts, "reward": "1{r > 0}", "internal_nodes": nodes, "recipes": rows}


_MEMORY_CHILD = r"""
import json, sys, tracemalloc
import numpy as np
side, k, depth, prompts = sys.argv[1], *map(int, sys.argv[2:5])
def rss(field):
  for line in open("/proc/self/status"):
    if line.startswith(field + ":"):
      return int(line.split()[1]) * 1024
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from nondecoupling.verify.tree_families import complete_tree
from nondecoupling.theory.tree.instance import n_nodes
from bench.bench_tree import _exact_engine, _levels_numpy
from bench.numpy_sequences import sequence_paths, sequence_quantities
tree = complete_tree(k, depth, prompts)
rng = np.random.default_rng(0)
theta = [rng.normal(0.0, 1.0, lv.reference.shape) for lv in tree.levels]
nodes = int(n_nodes(tree)[0]) * prompts
inputs = sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)) + sum(t.nbytes for t in theta)
if side == "jax":
  tree = jax.device_put(tree); theta = tuple(jnp.asarray(t) for t in theta)
  compiled = jax.jit(_exact_engine()).lower(tree, theta).compile()
  # Compiling raised the high-water mark: reset it (Linux) so that only the run is measured.
  open("/proc/self/clear_refs", "w").write("5")
  base = rss("VmRSS")
  jax.block_until_ready(compiled(tree, theta))
  peak = rss("VmHWM") - base
else:
  levels = _levels_numpy(tree)
  w, beta = np.asarray(tree.prompt_weights), float(tree.beta)
  tracemalloc.start()
  flat, mask = sequence_paths(levels)
  sequence_quantities(levels, theta, w, beta, flat, mask)
  peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"nodes": nodes, "input_bytes": inputs, "peak_bytes": peak}))
"""


def memory_by_size(depths=(2, 3, 4, 5), prompts=64):
  """Peak memory of one exact evaluation at several depths of the complete k = 8 tree."""
  import json
  import subprocess
  import sys
  from pathlib import Path

  rows = []
  for depth in depths:
    row = {"T": depth}
    for side in ("jax", "numpy"):
      proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, side, str(K), str(depth),
                             str(prompts)], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1])
      if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
      got = json.loads(proc.stdout.strip().splitlines()[-1])
      row.update(nodes=got["nodes"], input_bytes=got["input_bytes"])
      row[f"{side}_peak_bytes"] = got["peak_bytes"]
      row[f"{side}_bytes_per_node"] = got["peak_bytes"] / got["nodes"]
    rows.append(row)
    print(f"  T = {depth}: {row['nodes']} nodes, peak JAX {row['jax_peak_bytes'] / 2**20:.1f} MiB "
          f"({row['jax_bytes_per_node']:.0f} B/node), NumPy {row['numpy_peak_bytes'] / 2**20:.1f}"
          f" MiB ({row['numpy_bytes_per_node']:.0f} B/node)", flush=True)
  return {"prompts": prompts, "k": K, "rows": rows}


def _enumerate(levels, x, log_rows):
  """(leaf log-probabilities under the per-level log rows, ρ, d, r) by walking the arrays."""
  out = []
  stack = [(0, 0, 0.0, 0.0)]
  while stack:
    t, i, lp, lr = stack.pop()
    lv = levels[t]
    for a in np.flatnonzero(lv["leaf"][x, i] | lv["internal"][x, i]):
      lp2 = lp + log_rows[t][x, i, a]
      lr2 = lr + np.log(lv["reference"][x, i, a])
      if lv["leaf"][x, i, a]:
        out.append((lp2, lr2, lv["data"][x, i, a], lv["reward"][x, i, a], (t, i, a)))
      else:
        stack.append((t + 1, int(lv["child"][x, i, a]), lp2, lr2))
  return out


def brute_force_disagreement(n_trees: int = 300):
  import jax
  import jax.numpy as jnp

  from nondecoupling.theory.tree import bellman, objectives as obj, policy
  from nondecoupling.theory.tree.instance import Bucket, index_tree
  from nondecoupling.verify.tree_families import TREE_FAMILIES

  bucket = Bucket(3, 6, (1, 5, 12, 20))
  rng = np.random.default_rng(1)
  per = n_trees // len(TREE_FAMILIES)

  @jax.jit
  def engine(tree, theta):
    lp = policy.policy_log_probs(tree, theta)
    return (lp, policy.leaf_log_probs(tree, lp), bellman.optimal_policy(tree),
            obj.sft_loss(tree, lp), obj.reward(tree, lp), obj.kl(tree, lp),
            bellman.log_partition(tree))

  worst = {"L": 0.0, "J": 0.0, "KL": 0.0, "log_Z": 0.0, "pi": 0.0, "pi_star": 0.0}
  rel = lambda a, b: abs(a - b) / max(1.0, abs(b))
  for fam in TREE_FAMILIES.values():
    trees = fam(rng, per, bucket)
    for b in range(per):
      tree = index_tree(trees, b)
      theta = tuple(jnp.asarray(rng.normal(0.0, 2.0, lv.reference.shape)) for lv in tree.levels)
      lp, leaves, star, l_val, j_val, kl_val, log_z = jax.tree.map(np.asarray,
                                                                    engine(tree, theta))
      levels = [{k: np.asarray(getattr(lv, k)) for k in ("leaf", "internal", "reference", "data",
                                                          "reward", "child")}
                for lv in tree.levels]
      w = np.asarray(tree.prompt_weights)
      beta = float(tree.beta)
      l_ref = j_ref = 0.0
      for x in np.flatnonzero(w > 0):
        seqs = _enumerate(levels, x, lp)
        star_seqs = _enumerate(levels, x, star)
        log_pi = np.array([s[0] for s in seqs])
        log_rho = np.array([s[1] for s in seqs])
        d = np.array([s[2] for s in seqs])
        r = np.array([s[3] for s in seqs])
        pi = np.exp(log_pi)
        l_ref += w[x] * -np.sum(d[d > 0] * log_pi[d > 0])
        j_ref += w[x] * np.sum(pi * r)
        worst["KL"] = max(worst["KL"], rel(float(kl_val[x]), np.sum(pi * (log_pi - log_rho))))
        z = log_rho + r / beta
        log_z_ref = z.max() + np.log(np.sum(np.exp(z - z.max())))
        worst["log_Z"] = max(worst["log_Z"], rel(float(log_z[x]), log_z_ref))
        star_ref = np.exp(z - log_z_ref)
        worst["pi_star"] = max(worst["pi_star"],
                               float(np.max(np.abs(np.exp([s[0] for s in star_seqs]) - star_ref))))
        engine_pi = np.exp([leaves[t][x, i, a] for (_, _, _, _, (t, i, a)) in seqs])
        worst["pi"] = max(worst["pi"], float(np.max(np.abs(pi - engine_pi))))
      worst["L"] = max(worst["L"], rel(float(l_val), l_ref))
      worst["J"] = max(worst["J"], rel(float(j_val), j_ref))
  print("  worst disagreement with brute force:", {k: f"{v:.2e}" for k, v in worst.items()})
  return {"trees": per * len(TREE_FAMILIES), "bucket": list(bucket.nodes), "worst": worst}


def main(argv=None) -> int:
  print(f"complete tree k = {K}, T = {DEPTH}, {PROMPTS} prompts:", flush=True)
  timings = complete_tree_timings()
  versus = sequences_vs_engine()
  print("every recipe's exact field (0/1 reward):", flush=True)
  recipes = recipe_fields()
  memory = memory_by_size()
  agreement = brute_force_disagreement()
  path = write_result("bench_tree", {"complete_tree": timings, "versus_numpy_sequences": versus,
                                     "recipe_fields": recipes,
                                     "memory_by_size": memory, "brute_force": agreement})
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

"""Benchmark of the token-level engine (THEORY.md part G) on the complete k = 8, T = 5 tree.

(a) The complete tree with k = 8 tokens (one EOS) and maximum length T = 5: 2,801 internal nodes
    and 19,608 leaves per prompt, batched over 256 prompts in one TreeInstance (vmap-free: the
    prompt axis is part of every array). For each engine function: compile time and run time
    (median of 5 runs after compiling), and time per node (run time / (256 × 2,801)).
(b) The worst disagreement with brute force: 300 random trees (every family, depth ≤ 4) whose
    sequences are enumerated in NumPy from the level arrays (an independent walk), comparing
    L, J, KL(π‖ρ) and log Z (relative error) and the leaf probabilities of π and π*_β (absolute).

Run: ``python -m bench.bench_tree``. Prints the numbers and writes bench/out/bench_tree.json.
Nothing is asserted.
"""

from __future__ import annotations

import time

import numpy as np

from bench import write_result

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
  agreement = brute_force_disagreement()
  path = write_result("bench_tree", {"complete_tree": timings, "brute_force": agreement})
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

"""Benchmark of the exact G5 group enumeration (theory/tree/groups.py): time vs number of levels.

One prompt whose leaves have L distinct rewards (a depth-1 tree of L responses, so the tree walk
costs nothing and the time is the enumeration's), G = 8, mode ``seq-mean-token-sum`` with std
normalisation: C(L + 6, 7) multisets for each of the L own levels. For L = 2 … 18: the multiset
count, compile time and run time (median of 3 runs after compiling) of
``expected_group_weights``; L = 19 is beyond ``MAX_GROUP_MULTISETS`` and must raise
``InfeasibleGroupEnumeration`` (reported). The limit is set where a run takes at most about 1 s on
the project's 2-core CPU.

Run: ``python -m bench.bench_tree_groups [--max-levels L]``. Prints the numbers and writes
bench/out/bench_tree_groups.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench import write_result

GROUP = 8


def _time_levels(levels: int) -> dict:
  import jax
  import jax.numpy as jnp

  from nondecoupling.theory.instance import make_instance
  from nondecoupling.theory.tree import groups
  from nondecoupling.theory.tree.atomic import tree_from_atomic
  from nondecoupling.theory.tree.policy import reference_log_probs

  rng = np.random.default_rng(levels)
  ref = rng.dirichlet(np.ones(levels))[None]
  inst = make_instance([1.0], ref, np.linspace(-1.0, 1.0, levels)[None], 1.0, reference=ref)
  tree = tree_from_atomic(inst)
  lp = reference_log_probs(tree)
  fn = jax.jit(lambda tree, lp: groups.expected_group_weights(
      tree, lp, groups.leaf_rewards(tree), group_size=GROUP, mode="seq-mean-token-sum",
      use_std=True, eps=1e-6, max_length=1.0, levels=levels))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(tree, lp))
  compile_s = time.perf_counter() - t0
  runs = []
  for _ in range(3):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(tree, lp))
    runs.append(time.perf_counter() - t0)
  assert bool(jnp.all(jnp.isfinite(out[0])))
  return {"levels": levels, "multisets": groups.group_multisets(levels, GROUP),
          "compile_s": compile_s, "run_s": float(np.median(runs))}


def main(argv=None) -> int:
  from nondecoupling.theory.tree import groups

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max-levels", type=int, default=18)
  args = parser.parse_args(argv)
  rows = []
  for levels in range(2, args.max_levels + 1):
    row = _time_levels(levels)
    rows.append(row)
    print(f"L = {levels:3d}  multisets {row['multisets']:>9,d}  compile {row['compile_s']:7.2f} s"
          f"  run {row['run_s']:8.4f} s", flush=True)
  beyond = args.max_levels + 1
  try:
    groups.check_enumeration(beyond, GROUP)
    refused = None
  except groups.InfeasibleGroupEnumeration as err:
    refused = str(err)
  print(f"limit: MAX_GROUP_MULTISETS = {groups.MAX_GROUP_MULTISETS:,d}; L = {beyond}: {refused}")
  path = write_result("bench_tree_groups", {"group_size": GROUP, "timings": rows,
                                            "limit": groups.MAX_GROUP_MULTISETS,
                                            "refused": refused})
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

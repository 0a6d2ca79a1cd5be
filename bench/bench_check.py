"""Benchmark of the exact engine (issue 2): every `check` quantity, batched and at scale.

1. Throughput: 4096 instances with |X| = 16, |Y| = 8, all `check` quantities (β_c included),
   jit + vmap against a straightforward per-instance NumPy/SciPy loop (verify.reference).
2. One instance with |X|·|Y| = 2^24 entries in float64 against the same quantities vectorised in
   NumPy/SciPy; each side runs in its own process so that its peak memory (max RSS growth over the
   process after imports) can be read, and is compared with the input arrays' bytes.

Run: ``python -m bench.bench_check`` (``--quick`` for a smaller run). Prints a table and writes
bench/out/bench_check.json. Nothing here is asserted: the numbers go into README's Performance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import warm_up, write_result
from bench.numpy_batched import batched_quantities


def _instances(n, nx, ny, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.dirichlet(np.ones(nx), n)
  d = rng.dirichlet(np.ones(ny), (n, nx))
  ref = rng.dirichlet(np.ones(ny), (n, nx))
  r = rng.uniform(-1, 1, (n, nx, ny))
  beta = np.exp(rng.uniform(np.log(0.05), np.log(5.0), n))
  return w, d, ref, r, beta


def batched_throughput(n=4096, nx=16, ny=8, loop_n=256):
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_enable_x64", True)
  from nondecoupling.theory.instance import Instance
  from nondecoupling.theory.quantities import check_quantities
  from nondecoupling.verify.numpy_reference import reference_quantities

  w, d, ref, r, beta = _instances(n, nx, ny)
  batch = Instance(prompt_weights=jnp.asarray(w), data=jnp.asarray(d), reference=jnp.asarray(ref),
                   reward=jnp.asarray(r), beta=jnp.asarray(beta),
                   response_mask=jnp.ones((n, nx, ny), bool))
  from jax.sharding import PartitionSpec

  from nondecoupling.theory.quantities import batch_check_quantities
  from nondecoupling.verify.sweep import AXIS, instance_mesh, shard_batch
  batch, _ = shard_batch(batch)  # split over every local device (each CPU core is one)
  # Each device maps over chunks of its own shard (batch_check_quantities); check_vma is off
  # because β_c's Newton loop starts from per-device constants.
  fn = jax.jit(jax.shard_map(batch_check_quantities, mesh=instance_mesh(),
                             in_specs=PartitionSpec(AXIS), out_specs=PartitionSpec(AXIS),
                             check_vma=False))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(batch))
  compile_s = time.perf_counter() - t0
  jax_s, out = _best_of(lambda: jax.block_until_ready(fn(batch)))
  whole = jax.jit(jax.vmap(check_quantities))  # vmap over each device's whole shard
  jax.block_until_ready(whole(batch))
  vmap_s, _ = _best_of(lambda: jax.block_until_ready(whole(batch)))
  vec_s, vec = _best_of(lambda: batched_quantities(w, d, ref,
                                                   r, beta))
  floor_fn = jax.jit(lambda x: jnp.sum(jnp.exp(x)))
  jax.block_until_ready(floor_fn(batch.reward))
  floor_s, _ = _best_of(lambda: jax.block_until_ready(floor_fn(batch.reward)))
  vec_worst = 0.0
  for k, v in vec.items():
    got, want = np.asarray(out[k])[:n], np.asarray(v)
    both = np.isfinite(want) & np.isfinite(got)
    assert np.array_equal(np.isfinite(want), np.isfinite(got)), k
    if both.any():
      vec_worst = max(vec_worst, float(np.max(np.abs(got[both] - want[both])
                                              / np.maximum(1.0, np.abs(want[both])))))
  t0 = time.perf_counter()
  ref_out = [reference_quantities(w[i], d[i], ref[i], r[i], beta[i]) for i in range(loop_n)]
  loop_s = time.perf_counter() - t0
  # Agreement on the instances both computed.
  worst = 0.0
  for i, q in enumerate(ref_out):
    for k, v in q.items():
      got = float(out[k][i])
      if v is not None:
        worst = max(worst, abs(got - v) / max(1.0, abs(v)))
  jax_rate = n / jax_s
  loop_rate = loop_n / loop_s
  return {"instances": n, "shape": [nx, ny], "devices": jax.device_count(), "jax_seconds": jax_s, "jax_vmap_whole_shard_seconds": vmap_s, "jax_compile_seconds": compile_s,
          "jax_instances_per_s": jax_rate, "numpy_loop_instances": loop_n,
          "numpy_loop_seconds": loop_s, "numpy_instances_per_s": loop_rate,
          "speedup": jax_rate / loop_rate, "max_relative_disagreement": worst,
          "numpy_vectorised_seconds": vec_s, "speedup_vs_vectorised": vec_s / jax_s,
          "vectorised_max_relative_disagreement": vec_worst,
          "floor_exp_pass_seconds": floor_s, "entries": n * nx * ny,
          "jax_over_floor": jax_s / floor_s}


def _best_of(fn, reps=5):
  """(median seconds, last result) of ``reps`` calls after :func:`~bench.warm_up`."""
  warm_up(fn)
  times, out = [], None
  for _ in range(reps):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


_LARGE_CHILD = r"""
import json, resource, sys, time
import numpy as np
side, nx, ny = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if side == "jax":
  import jax, jax.numpy as jnp
  jax.config.update("jax_enable_x64", True)
  from nondecoupling.theory.instance import Instance
  from nondecoupling.theory.quantities import check_quantities
  fn = jax.jit(check_quantities)
  # compile on abstract shapes first, so compilation does not count in the peak
  spec = jax.ShapeDtypeStruct((nx, ny), jnp.float64)
  abstract = Instance(prompt_weights=jax.ShapeDtypeStruct((nx,), jnp.float64), data=spec,
                      reference=spec, reward=spec, beta=jax.ShapeDtypeStruct((), jnp.float64),
                      response_mask=jax.ShapeDtypeStruct((nx, ny), jnp.bool_))
  t0 = time.perf_counter(); compiled = fn.lower(abstract).compile(); compile_s = time.perf_counter() - t0
else:
  import scipy
  from nondecoupling.verify.numpy_reference import reference_quantities
  compile_s = 0.0
base = rss_mb()
rng = np.random.default_rng(0)
def make(kind):
  if kind == "reward":
    return rng.uniform(-1, 1, (nx, ny))
  a = rng.uniform(0.05, 1.0, (nx, ny)); a /= a.sum(1, keepdims=True); return a
w = np.full(nx, 1.0 / nx)
if side == "jax":
  arrays = {}
  for k in ("data", "reference", "reward"):
    a = make(k); arrays[k] = jnp.asarray(a); del a
  inst = Instance(prompt_weights=jnp.asarray(w), data=arrays["data"], reference=arrays["reference"],
                  reward=arrays["reward"], beta=jnp.asarray(0.5), response_mask=jnp.ones((nx, ny), bool))
  del arrays
  jax.block_until_ready(compiled(inst))
  t0 = time.perf_counter(); reps = 3
  for _ in range(reps): out = jax.block_until_ready(compiled(inst))
  seconds = (time.perf_counter() - t0) / reps
  out = {k: float(v) for k, v in out.items()}
else:
  d, ref, r = make("data"), make("reference"), make("reward")
  t0 = time.perf_counter(); reps = 1
  out = reference_quantities(w, d, ref, r, 0.5)
  seconds = (time.perf_counter() - t0) / reps
print(json.dumps({"side": side, "seconds": seconds, "compile_seconds": compile_s,
                  "peak_mb_over_base": rss_mb() - base, "quantities": out}))
"""


def large_instance(nx=1 << 16, ny=1 << 8):
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
  results = {}
  for side in ("jax", "numpy"):
    proc = subprocess.run([sys.executable, "-c", _LARGE_CHILD, side, str(nx), str(ny)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    if proc.returncode != 0:
      raise RuntimeError(proc.stderr[-2000:])
    results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
  input_mb = 3 * nx * ny * 8 / 2 ** 20
  worst = 0.0
  for k, v in results["numpy"]["quantities"].items():
    if v is not None:
      worst = max(worst, abs(results["jax"]["quantities"][k] - v) / max(1.0, abs(v)))
  return {"shape": [nx, ny], "entries": nx * ny, "input_mb": input_mb,
          "jax_seconds": results["jax"]["seconds"],
          "jax_compile_seconds": results["jax"]["compile_seconds"],
          "numpy_seconds": results["numpy"]["seconds"],
          "speedup": results["numpy"]["seconds"] / results["jax"]["seconds"],
          "jax_peak_mb": results["jax"]["peak_mb_over_base"],
          "numpy_peak_mb": results["numpy"]["peak_mb_over_base"],
          "jax_peak_over_input": results["jax"]["peak_mb_over_base"] / input_mb,
          "numpy_peak_over_input": results["numpy"]["peak_mb_over_base"] / input_mb,
          "max_relative_disagreement": worst}


def use_every_core() -> None:
  """One XLA host device per core and reductions fused with their loops (before jax starts), as
  `verify` does, so batches run in parallel; the NumPy baseline is the single-threaded loop a
  user would write."""
  from nondecoupling.verify.devices import fuse_row_reductions, use_every_core as setup
  setup()
  fuse_row_reductions()


def main(argv=None):
  use_every_core()
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
  args = ap.parse_args(argv)
  from rich.console import Console
  from rich.table import Table
  if args.quick:
    batched = batched_throughput(n=512, loop_n=64)
    large = large_instance(nx=1 << 12, ny=1 << 8)
  else:
    batched = batched_throughput()
    large = large_instance()
  t = Table(title="bench_check (ratios measured in the same run)")
  for c in ("benchmark", "ours", "baseline", "ratio", "target"):
    t.add_column(c)
  t.add_row(f"check quantities, {batched['instances']} × {batched['shape']}",
            f"{batched['jax_instances_per_s']:.0f} inst/s",
            f"{batched['numpy_instances_per_s']:.0f} inst/s (NumPy/SciPy loop)",
            f"{batched['speedup']:.0f}×", "≥ 100×")
  t.add_row(f"the same, vectorised baseline ({batched['entries']} entries)",
            f"{batched['jax_seconds'] * 1e3:.1f} ms",
            f"{batched['numpy_vectorised_seconds'] * 1e3:.1f} ms (NumPy over the whole batch)",
            f"{batched['speedup_vs_vectorised']:.1f}×", "≥ 3×")
  t.add_row("  (ours with vmap over each device's whole shard)",
            f"{batched['jax_vmap_whole_shard_seconds'] * 1e3:.1f} ms", "",
            f"{batched['numpy_vectorised_seconds'] / batched['jax_vmap_whole_shard_seconds']:.1f}×", "")
  t.add_row("floor: one float64 exp pass over the entries",
            f"{batched['floor_exp_pass_seconds'] * 1e3:.2f} ms", "",
            f"ours = {batched['jax_over_floor']:.0f}× floor", "")
  t.add_row(f"one instance, 2^{int(np.log2(large['entries']))} entries",
            f"{large['jax_seconds']:.2f} s", f"{large['numpy_seconds']:.2f} s (vectorised NumPy)",
            f"{large['speedup']:.1f}×", "≥ 5×")
  t.add_row("peak memory / input bytes", f"{large['jax_peak_over_input']:.2f}×",
            f"{large['numpy_peak_over_input']:.2f}× (NumPy)", "", "≤ 4×")
  Console(width=140).print(t)
  write_result("bench_check", {"batched": batched, "large": large})
  return 0


if __name__ == "__main__":
  sys.exit(main())

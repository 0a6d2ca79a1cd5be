"""Benchmark of the gradient flows (issue 3).

(a) One RL flow θ̇ = ∇J_β on |X| = 64, |Y| = 16 to relative tolerance 1e-8 (atol 1e-10) over 5u
    (u = 1/min w = 64): our diffrax flow (Tsit5, jit) against scipy.integrate.solve_ivp (RK45,
    same rtol/atol) on the same ODE with a NumPy right-hand side; compile time excluded from the
    ratio and reported. The end points are compared.
(b) 256 RL flows (|X| = 16, |Y| = 8, different instances) batched with jax.vmap against the same
    jitted flow called once per instance.
(c) Wall time of `nondecoupling compare` on a 64 × 16 instance (a fresh process: compile
    included).

Run: ``python -m bench.bench_flows``. Prints the numbers and ratios and writes
bench/out/bench_flows.json. Nothing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import write_result

RTOL, ATOL = 1e-8, 1e-10
BETA = 0.1
HORIZON_UNITS = 100.0  # flow length in units of u = |X| (uniform weights): near convergence


def _arrays(rng, nx, ny):
  d = rng.dirichlet(np.ones(ny), nx)
  ref = rng.dirichlet(np.ones(ny) * 2, nx)
  r = rng.uniform(-1, 1, (nx, ny))
  return np.ones(nx) / nx, d, ref, r, BETA


def single_flow():
  import jax
  import jax.numpy as jnp
  import scipy.integrate

  from nondecoupling.theory import flows
  from nondecoupling.theory.instance import make_instance
  w, d, ref, r, beta = _arrays(np.random.default_rng(0), 64, 16)
  inst = make_instance(w, d, r, beta, reference=ref)
  t_end = HORIZON_UNITS * 64.0
  ts = jnp.array([t_end])
  t0 = time.perf_counter()
  jax.block_until_ready(flows.rl_flow(inst, ts, rtol=RTOL, atol=ATOL))
  compile_s = time.perf_counter() - t0
  reps = 20
  t0 = time.perf_counter()
  for _ in range(reps):
    th, ok = jax.block_until_ready(flows.rl_flow(inst, ts, rtol=RTOL, atol=ATOL))
  jax_s = (time.perf_counter() - t0) / reps

  log_ref = np.log(ref)

  def rhs(t, y):
    theta = y.reshape(d.shape)
    z = theta - theta.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    h = r - beta * (np.log(p) - log_ref)
    return (w[:, None] * (p * h - p * (p * h).sum(1, keepdims=True))).ravel()

  t0 = time.perf_counter()
  sol = scipy.integrate.solve_ivp(rhs, (0.0, t_end), log_ref.ravel(), method="RK45", rtol=RTOL,
                                  atol=ATOL)
  scipy_s = time.perf_counter() - t0
  p_jax = np.asarray(jax.nn.softmax(th[-1], axis=-1))
  y = sol.y[:, -1].reshape(d.shape)
  p_scipy = np.exp(y - y.max(1, keepdims=True))
  p_scipy /= p_scipy.sum(1, keepdims=True)
  return dict(jax_s=jax_s, compile_s=compile_s, scipy_s=scipy_s, ratio=scipy_s / jax_s,
              scipy_steps=int(sol.t.shape[0]), ok=bool(ok),
              max_prob_diff=float(np.max(np.abs(p_jax - p_scipy))))


def batched_flows(n=256, nx=16, ny=8):
  import jax
  import jax.numpy as jnp

  from nondecoupling.theory import flows
  from nondecoupling.theory.instance import make_instance, stack
  rng = np.random.default_rng(1)
  insts = []
  for _ in range(n):
    w, d, ref, r, beta = _arrays(rng, nx, ny)
    insts.append(make_instance(w, d, r, beta, reference=ref))
  from nondecoupling.verify.sweep import shard_batch
  batch, _ = shard_batch(stack(insts))  # the vmapped batch is split over every local device
  ts = jnp.array([HORIZON_UNITS * nx])
  one = jax.jit(lambda inst: flows.rl_flow(inst, ts, rtol=RTOL, atol=ATOL))
  # Each device integrates its own shard with its own adaptive loop (shard_map), so devices do
  # not wait on each other at every step as a globally sharded while-loop would.
  from jax.sharding import PartitionSpec

  from nondecoupling.verify.sweep import AXIS, instance_mesh
  per_shard = jax.vmap(lambda inst: flows.rl_flow(inst, ts, rtol=RTOL, atol=ATOL))
  many = jax.jit(jax.shard_map(per_shard, mesh=instance_mesh(), in_specs=PartitionSpec(AXIS),
                               out_specs=PartitionSpec(AXIS), check_vma=False))
  jax.block_until_ready(one(insts[0]))
  jax.block_until_ready(many(batch))
  t0 = time.perf_counter()
  for inst in insts:
    jax.block_until_ready(one(inst))
  loop_s = time.perf_counter() - t0
  reps = 3
  t0 = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(many(batch))
  vmap_s = (time.perf_counter() - t0) / reps
  return dict(n=n, shape=[nx, ny], devices=jax.device_count(), loop_s=loop_s, vmap_s=vmap_s,
              ratio=loop_s / vmap_s)


def compare_time():
  w, d, ref, r, beta = _arrays(np.random.default_rng(2), 64, 16)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "inst.json"
    path.write_text(json.dumps({"beta": beta, "prompt_weights": w.tolist(), "data": d.tolist(),
                                "reward": r.tolist(), "reference": ref.tolist()}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "verify.cli", "compare", str(path), "--json"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
  rows = json.loads(proc.stdout)["recipes"] if proc.returncode == 0 else []
  return dict(seconds=wall, rc=proc.returncode,
              monte_carlo=[r["name"] for r in rows if r.get("status") != "ok"])


def main(argv=None):
  del argv
  from nondecoupling.verify.devices import use_every_core
  use_every_core()  # one CPU device per core, as `verify` runs
  import jax
  jax.config.update("jax_enable_x64", True)
  a = single_flow()
  print(f"(a) RL flow 64x16 to rtol {RTOL:g}: diffrax {a['jax_s'] * 1e3:.2f} ms "
        f"(compile {a['compile_s']:.2f} s), scipy RK45 {a['scipy_s'] * 1e3:.1f} ms "
        f"({a['scipy_steps']} steps): {a['ratio']:.1f}x faster; "
        f"max |Δπ| = {a['max_prob_diff']:.2e}")
  b = batched_flows()
  print(f"(b) {b['n']} RL flows {b['shape'][0]}x{b['shape'][1]}: one by one {b['loop_s']:.2f} s, "
        f"vmap {b['vmap_s']:.3f} s over {b['devices']} device(s): {b['ratio']:.1f}x throughput")
  c = compare_time()
  print(f"(c) `compare` on 64x16 (fresh process, compile included): {c['seconds']:.1f} s "
        f"(rc {c['rc']}; recipes trained with the sampled field: {c['monte_carlo']})")
  write_result("bench_flows", {"single_flow": a, "batched": b, "compare": c})


if __name__ == "__main__":
  main()

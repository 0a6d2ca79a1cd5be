"""Benchmark of the gradient flows (theory/flows.py, theory/integrators.py).

(a) One RL flow θ̇ = ∇J_β on |X| = 64, |Y| = 16, β = 0.1, over 100u (u = 1/min w = 64), rtol 1e-8,
    atol 1e-10: ours (auto: explicit Dormand–Prince 5(4) in one while loop) against
    scipy.integrate.solve_ivp(method="RK45") with the same tolerances on the same field written
    in vectorised NumPy (one exp per entry, no log: the strongest baseline a researcher would
    write). Cold (first call: trace + compile + run) and warm (best of repeated calls) side by
    side; steps, µs per step; both end points against a tight reference (DOP853, rtol 1e-13).
(b) The same instance with β = 1e6 (stiff: T · rate ≈ 5e6) over 5u: ours (auto: Rodas5P with
    the per-prompt Woodbury solve) against solve_ivp Radau given the exact block Jacobian as a
    sparse matrix, same tolerances (BDF took 400 s on this problem and is left out); ours with the
    explicit solver forced, for its step count.
(c) 256 RL flows (|X| = 16, |Y| = 8, different instances): one jax.vmap call on one device
    against the jitted flow called once per instance, plus the profile that explains the ratio
    (time per step alone and batched, steps of the slowest flow against the mean).
(d) Wall time of `nondecoupling compare` on a 64 × 16 instance (a fresh process: compile
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
REPEATS = 30


def _arrays(rng, nx, ny, beta=BETA):
  d = rng.dirichlet(np.ones(ny), nx)
  ref = rng.dirichlet(np.ones(ny) * 2, nx)
  r = rng.uniform(-1, 1, (nx, ny))
  return np.ones(nx) / nx, d, ref, r, beta


def numpy_field(w, ref, r, beta):
  """The RL field in vectorised NumPy: w π ⊙ (h − ⟨π, h⟩), h = r − β log(π/ρ), one exp per entry."""
  g = r + beta * np.log(ref)
  wc = w[:, None]
  shape = ref.shape

  def rhs(t, y):
    th = y.reshape(shape)
    z = th - th.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    q = g - beta * z  # h up to a per-row constant, which cancels
    mean = (e * q).sum(axis=1, keepdims=True) / s
    return (wc / s * e * (q - mean)).ravel()

  return rhs


def numpy_jacobian(w, ref, r, beta):
  """The exact block-diagonal Jacobian as a scipy.sparse matrix (for Radau and BDF)."""
  import scipy.sparse
  g = r + beta * np.log(ref)
  nx, ny = ref.shape

  def jac(t, y):
    th = y.reshape(nx, ny)
    z = th - th.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    q = g - beta * z
    c = p * (q - (p * q).sum(axis=1, keepdims=True) - beta)
    blocks = [w[x] * (np.diag(c[x]) - np.outer(c[x], p[x]) - np.outer(p[x], c[x])
                      - beta * np.outer(p[x], p[x])) for x in range(nx)]
    return scipy.sparse.block_diag(blocks, format="csc")

  return jac


def _probs(theta):
  p = np.exp(theta - theta.max(axis=-1, keepdims=True))
  return p / p.sum(axis=-1, keepdims=True)


def _best(fn, repeats):
  best = np.inf
  out = None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


def _ours(flows, inst, ts, **kw):
  import jax
  t0 = time.perf_counter()
  sol = jax.block_until_ready(flows.flow_solution(inst, ts, 0.0, 1.0, rtol=RTOL, atol=ATOL, **kw))
  cold = time.perf_counter() - t0
  warm, sol = _best(lambda: jax.block_until_ready(
      flows.flow_solution(inst, ts, 0.0, 1.0, rtol=RTOL, atol=ATOL, **kw)), REPEATS)
  steps = int(sol.accepted) + int(sol.rejected)
  return sol, dict(cold_s=cold, warm_s=warm, compile_s=cold - warm, accepted=int(sol.accepted),
                   rejected=int(sol.rejected), us_per_step=warm / max(steps, 1) * 1e6,
                   stiff=bool(sol.stiff), ok=bool(sol.ok))


def single_flow():
  import jax.numpy as jnp
  import scipy.integrate

  from nondecoupling.theory import flows
  from nondecoupling.theory.instance import make_instance
  w, d, ref, r, beta = _arrays(np.random.default_rng(0), 64, 16)
  inst = make_instance(w, d, r, beta, reference=ref)
  ts = np.array([1.0, 10.0, HORIZON_UNITS]) * 64.0  # u, 10u and the end (where it has settled)
  sol, ours = _ours(flows, inst, jnp.asarray(ts))
  rhs = numpy_field(w, ref, r, beta)
  y0 = np.log(ref).ravel()
  solve = lambda: scipy.integrate.solve_ivp(rhs, (0.0, ts[-1]), y0, method="RK45", rtol=RTOL,
                                            atol=ATOL, t_eval=ts)
  scipy_s, ivp = _best(solve, 5)
  exact = scipy.integrate.solve_ivp(rhs, (0.0, ts[-1]), y0, method="DOP853", rtol=1e-13,
                                    atol=1e-14, t_eval=ts)
  p_ref = _probs(exact.y.T.reshape((-1,) + d.shape))
  p_ours = _probs(np.asarray(sol.thetas))
  p_scipy = _probs(ivp.y.T.reshape((-1,) + d.shape))
  steps = scipy.integrate.solve_ivp(rhs, (0.0, ts[-1]), y0, method="RK45", rtol=RTOL,
                                    atol=ATOL).t.shape[0] - 1  # the same run, every step kept
  return dict(ours=ours, scipy_rk45_s=scipy_s, scipy_steps=int(steps),
              scipy_nfev=int(ivp.nfev), ratio=scipy_s / ours["warm_s"],
              ratio_cold=scipy_s / ours["cold_s"],
              max_prob_error_ours=float(np.max(np.abs(p_ours - p_ref))),
              max_prob_error_scipy=float(np.max(np.abs(p_scipy - p_ref))))


def stiff_flow(beta=1e6):
  import jax.numpy as jnp
  import scipy.integrate

  from nondecoupling.theory import flows
  from nondecoupling.theory.instance import make_instance
  w, d, ref, r, _ = _arrays(np.random.default_rng(0), 64, 16)
  inst = make_instance(w, d, r, beta, reference=ref)
  t_end = 5 * 64.0
  ts = jnp.array([t_end])
  sol, ours = _ours(flows, inst, ts)
  forced = flows.flow_solution(inst, ts, 0.0, 1.0, rtol=RTOL, atol=ATOL, method="explicit",
                               max_steps=20_000)
  rhs, jac = numpy_field(w, ref, r, beta), numpy_jacobian(w, ref, r, beta)
  y0 = np.log(ref).ravel()
  out = dict(ours=ours, explicit_forced_steps=int(forced.accepted) + int(forced.rejected),
             explicit_forced_ok=bool(forced.ok),
             rate_times_horizon=float(flows.stiffness_rate(inst, 0.0, 1.0)) * t_end)
  p_ours = _probs(np.asarray(sol.thetas[-1]))
  for method in ("Radau",):
    s, ivp = _best(lambda: scipy.integrate.solve_ivp(rhs, (0.0, t_end), y0, method=method,
                                                     rtol=RTOL, atol=ATOL, jac=jac), 1)
    out[method] = dict(seconds=s, steps=int(ivp.t.shape[0] - 1), nfev=int(ivp.nfev),
                       njev=int(ivp.njev), ratio=s / ours["warm_s"],
                       max_prob_diff=float(np.max(np.abs(_probs(ivp.y[:, -1].reshape(d.shape))
                                                         - p_ours))))
  return out


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
  batch = stack(insts)
  ts = jnp.array([HORIZON_UNITS * nx])
  solve = lambda inst: flows.flow_solution(inst, ts, 0.0, 1.0, rtol=RTOL, atol=ATOL,
                                           method="explicit")
  one = jax.jit(solve)
  many = jax.jit(jax.vmap(solve))
  t0 = time.perf_counter()
  jax.block_until_ready(one(insts[0]))
  compile_one = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(many(batch))
  compile_many = time.perf_counter() - t0

  def loop():
    return [jax.block_until_ready(one(inst)) for inst in insts]

  loop_s, sols = _best(loop, 3)
  vmap_s, bsol = _best(lambda: jax.block_until_ready(many(batch)), 3)
  steps = np.array([int(s.accepted) + int(s.rejected) for s in sols])
  profile = {}
  for size in (1, 16, 64, 256):
    sub = jax.tree.map(lambda a: a[:size], batch)
    jax.block_until_ready(many(sub))
    s, out = _best(lambda: jax.block_until_ready(many(sub)), 3)
    iters = int(np.max(np.asarray(out.accepted) + np.asarray(out.rejected)))
    profile[str(size)] = dict(seconds=s, loop_iterations=iters,
                              us_per_iteration=s / iters * 1e6,
                              us_per_iteration_per_flow=s / iters / size * 1e6)
  single_step_us = float(np.mean([loop_s / n / max(k, 1) for k in steps])) * 1e6
  return dict(n=n, shape=[nx, ny], devices=jax.device_count(), loop_s=loop_s, vmap_s=vmap_s,
              ratio=loop_s / vmap_s, compile_one_s=compile_one, compile_vmap_s=compile_many,
              steps_mean=float(steps.mean()), steps_max=int(steps.max()),
              single_flow_us_per_step=single_step_us, vmap_profile=profile,
              all_ok=bool(np.all(np.asarray(bsol.ok))))


def compare_time():
  w, d, ref, r, beta = _arrays(np.random.default_rng(2), 64, 16)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "inst.json"
    path.write_text(json.dumps({"beta": beta, "prompt_weights": w.tolist(), "data": d.tolist(),
                                "reward": r.tolist(), "reference": ref.tolist()}))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nondecoupling.verify.cli", "compare", str(path),
                           "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
  rows = json.loads(proc.stdout)["recipes"] if proc.returncode == 0 else []
  return dict(seconds=wall, rc=proc.returncode,
              not_ok=[(r["name"], r.get("status")) for r in rows if r.get("status") != "ok"])


def main(argv=None):
  del argv
  import jax
  jax.config.update("jax_enable_x64", True)
  a = single_flow()
  o = a["ours"]
  print(f"(a) RL flow 64x16, rtol {RTOL:g}: ours {o['warm_s'] * 1e3:.2f} ms warm "
        f"({o['accepted']}+{o['rejected']} steps, {o['us_per_step']:.1f} us/step), "
        f"{o['cold_s']:.2f} s cold (compile ~{o['compile_s']:.2f} s); scipy RK45 "
        f"{a['scipy_rk45_s'] * 1e3:.1f} ms ({a['scipy_steps']} steps, {a['scipy_nfev']} "
        f"evaluations): {a['ratio']:.1f}x warm, {a['ratio_cold']:.2f}x cold; max |dpi| vs "
        f"DOP853 1e-13: ours {a['max_prob_error_ours']:.1e}, scipy {a['max_prob_error_scipy']:.1e}")
  b = stiff_flow()
  o = b["ours"]
  print(f"(b) stiff RL flow 64x16, beta 1e6 (T*rate {b['rate_times_horizon']:.1e}): ours "
        f"{o['warm_s'] * 1e3:.2f} ms warm ({o['accepted']}+{o['rejected']} Rodas5P steps, "
        f"{o['us_per_step']:.0f} us/step, cold {o['cold_s']:.2f} s); explicit forced: "
        f"{b['explicit_forced_steps']} steps (ok {b['explicit_forced_ok']}); "
        + "; ".join(f"{m} {b[m]['seconds'] * 1e3:.1f} ms ({b[m]['steps']} steps): "
                    f"{b[m]['ratio']:.1f}x, max |dpi| {b[m]['max_prob_diff']:.1e}"
                    for m in ("Radau",)))
  c = batched_flows()
  print(f"(c) {c['n']} RL flows {c['shape'][0]}x{c['shape'][1]}: one by one {c['loop_s']:.3f} s, "
        f"vmap {c['vmap_s']:.3f} s on one device: {c['ratio']:.1f}x; steps mean "
        f"{c['steps_mean']:.0f}, max {c['steps_max']}; alone {c['single_flow_us_per_step']:.1f} "
        "us/step; batched us per loop iteration per flow: "
        + ", ".join(f"{k}: {v['us_per_iteration_per_flow']:.2f}"
                    for k, v in c["vmap_profile"].items()))
  d = compare_time()
  print(f"(d) `compare` on 64x16 (fresh process, compile included): {d['seconds']:.1f} s "
        f"(rc {d['rc']}; rows not ok: {d['not_ok']})")
  write_result("bench_flows", {"single_flow": a, "stiff_flow": b, "batched": c, "compare": d})


if __name__ == "__main__":
  main()

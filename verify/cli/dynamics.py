"""The training-dynamics commands: `frontier`, `compare` and `flow`."""

from __future__ import annotations

import functools

import numpy as np
from rich.table import Table

from ...theory import flows
from ...theory.frontier import frontier_curve
from ...theory.objectives import sft_optimum_loss
from ..compare import compare_rows, default_flow_call, flow_status, recipe_configs
from ..errors import InputError
from ..provenance import provenance
from ..stored_programs import stored_jit
from .args import parse_lambdas
from .console import cell, console, escape, print_json
from .limits import load_input
from .tree_commands import run_tree_compare, run_tree_flow, run_tree_frontier

__all__ = ["run_frontier", "run_compare", "run_flow", "frontier_points", "flow_points",
           "FLOW_FIELDS"]

FLOW_FIELDS = ("sft_loss", "reward", "regularized_reward", "kl_data", "kl_reference",
               "sft_grad_norm", "rl_grad_norm", "grad_cosine")


def frontier_points(inst, lambdas: list[float]) -> list[dict]:
  """[{"lambda", "sft_loss", "reward"}] on the exact frontier (this project's D4)."""
  sft, rew = frontier_curve(inst, np.asarray(lambdas, np.float64))
  return [{"lambda": float(lam), "sft_loss": float(l_val), "reward": float(j_val)}
          for lam, l_val, j_val in zip(lambdas, np.asarray(sft), np.asarray(rew))]


def _print_table(path: str, points: list[dict], inst) -> None:
  table = Table(title=f"Exact SFT-reward frontier of {escape(path)} (this project's D4: "
                      "π_λ = argmin L − λJ)")
  table.add_column("λ", justify="right")
  table.add_column("SFT loss L", justify="right")
  table.add_column("L − L(d)", justify="right")
  table.add_column("reward J", justify="right")
  l_d = float(sft_optimum_loss(inst))
  for p in points:
    table.add_row(f"{p['lambda']:.6g}", f"{p['sft_loss']:.8f}", f"{p['sft_loss'] - l_d:.3e}",
                  f"{p['reward']:.8f}")
  console().print(table)


def run_frontier(args) -> int:
  lambdas = parse_lambdas(args.lambdas)
  loaded = load_input(args)
  if not isinstance(loaded, tuple):  # a tree file: its leaf set
    return run_tree_frontier(args, loaded, lambdas, frontier_points)
  inst, _ = loaded
  points = frontier_points(inst, lambdas)
  if args.json:
    print_json({"points": points, "provenance": provenance()}, indent=2)
  else:
    _print_table(args.file, points, inst)
  return 0


def _cosine_note(point: dict, scales) -> str | None:
  """Why cos∠(∇L, ∇J_β) is null at a point (None when it is reported)."""
  if point["grad_cosine"] is not None:
    return None
  s_l, s_j = scales
  tau = flows.GRAD_COSINE_RTOL
  gone = [f"{name} = {norm:.3g} is below {tau:g} x its scale {scale:.3g}"
          for name, norm, scale in (("|grad L|", point["sft_grad_norm"], s_l),
                                    ("|grad J_beta|", point["rl_grad_norm"], s_j))
          if norm is not None and not norm > tau * scale]
  if not gone:
    return "the flow did not reach this point"
  return "undefined: " + " and ".join(gone) + " (within rounding of 0: no direction)"


def flow_points(inst, pipeline: str, points: int) -> dict:
  """The trajectory of one named pipeline (default schedule) as a JSON-ready dict.

  cos∠(∇L, ∇J_β) is null where a gradient is below ``flows.GRAD_COSINE_RTOL`` times its natural
  scale (``Trajectory.sft_grad_scale`` / ``rl_grad_scale``), with the reason in
  ``grad_cosine_undefined``. A
  flow that stops short has ``converged`` false, an ``error`` and null values from there on.
  """
  sched = flows.pipeline_schedule(pipeline, inst)
  tr = _stored_flow(inst, sched, points)
  cols = {k: np.asarray(getattr(tr, k)) for k in ("times", "phase") + FLOW_FIELDS}
  out = []
  for i in range(cols["times"].shape[0]):
    p = {"time": float(cols["times"][i]), "phase": int(cols["phase"][i])}
    p.update({k: _finite_or_none(cols[k][i]) for k in FLOW_FIELDS})
    out.append(p)
  scales = zip(np.asarray(tr.sft_grad_scale).tolist(), np.asarray(tr.rl_grad_scale).tolist())
  for p, sc in zip(out, scales):
    note = _cosine_note(p, sc)
    if note is not None:
      p["grad_cosine_undefined"] = note
  status = flow_status(tr, sched)
  res = {"pipeline": pipeline, "time_unit": float(flows.time_unit(inst)),
         "converged": bool(tr.ok),
         "solver": ["implicit" if s else "explicit" for s in np.asarray(tr.stiff).tolist()],
         "steps": np.asarray(tr.steps).tolist(),
         "schedule": {"sft_weight": np.asarray(sched.sft_weight).tolist(),
                      "rl_weight": np.asarray(sched.rl_weight).tolist(),
                      "duration": np.asarray(sched.duration).tolist(),
                      "reset_reference": np.asarray(sched.reset_reference).tolist()},
         "points": out}
  if status != "ok":
    res["error"] = status
  return res


@functools.lru_cache(maxsize=None)
def _flow_program(n_save: int, method: str):
  """One program per (n_save, method), so repeated calls in a process reuse its compilations."""
  return stored_jit(functools.partial(flows.flow_trajectory, n_save=n_save, method=method),
                    name=f"{flows.__name__}.flow_trajectory[n_save={n_save},method={method}]")


def _stored_flow(inst, schedule, n_save: int):
  """:func:`flows.run_flow` (default tolerances) as a program kept on disk between processes."""
  method, args = default_flow_call(inst, schedule)
  return _flow_program(n_save, method)(*args)


def _finite_or_none(v) -> float | None:
  v = float(v)
  return v if np.isfinite(v) else None


def run_compare(args) -> int:
  if args.recipe_steps > 100_000:
    raise InputError(f"--recipe-steps is {args.recipe_steps}, expected at most 100000")
  loaded = load_input(args)
  if not isinstance(loaded, tuple):  # a tree file
    return run_tree_compare(args, loaded)
  inst, _ = loaded
  configs = recipe_configs(args.recipe_option)
  with console(stderr=True).status("compare") as status:
    rows = compare_rows(inst, args.recipe_steps, args.recipe_lr,
                        progress=lambda n: status.update(f"compare: {n}"), configs=configs)
  defaults = {"recipe_steps": args.recipe_steps, "recipe_lr_per_time_unit": args.recipe_lr,
              "pipelines": "SFT/RL flows of 5u each; alternating every u over 10u; joint λ=1 10u",
              "recipe_options": list(args.recipe_option),
              "time_unit": rows and float(1.0 / min(w for w in inst.prompt_weights.tolist()
                                                    if w > 0))}
  if args.json:
    print_json({"recipes": rows, "defaults": defaults, "provenance": provenance()})
    return 0
  table = Table(title=f"end points on {escape(args.file)} (regret: this project's D4)")
  cols = ("name", "kind", "sft_loss", "reward", "regularized_reward", "regret", "kl_data",
          "kl_reference", "seconds")
  for c in cols:
    table.add_column(c, justify="left" if c in ("name", "kind") else "right")
  for r in rows:
    table.add_row(*[escape(r[c]) if c in ("name", "kind") else cell(r[c]) for c in cols])
  console().print(table)
  return 0


def run_flow(args) -> int:
  if args.points > 10_000:
    raise InputError(f"--points is {args.points}, expected at most 10000")
  if args.steps > 1_000_000:
    raise InputError(f"--steps is {args.steps}, expected at most 1000000")
  loaded = load_input(args)
  if not isinstance(loaded, tuple):  # a tree file
    return run_tree_flow(args, loaded)
  inst, _ = loaded
  res = flow_points(inst, args.pipeline, args.points)
  if args.json:
    print_json({**res, "provenance": provenance()})
    return 0
  table = Table(title=f"{args.pipeline} on {escape(args.file)} (time unit u = {res['time_unit']:.6g})")
  cols = ("time", "phase") + FLOW_FIELDS
  for c in cols:
    table.add_column(c, justify="right")
  for p in res["points"]:
    table.add_row(*[str(p[c]) if c == "phase" else cell(p[c]) for c in cols])
  console().print(table)
  return 0

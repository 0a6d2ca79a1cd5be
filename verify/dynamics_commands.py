"""Training-dynamics commands: `compare`, `flow` (and `frontier`, from verify.frontier_command).

``nondecoupling compare FILE [--json]`` runs every pipeline and fusion recipe on an instance with
documented defaults and reports where each ends: SFT loss L, reward J, regularised reward J_β
(the instance's ρ and β), the decoupling regret of this project's D4, E_w KL(d‖π) and
E_w KL(π‖ρ). JSON: ``{"recipes": [{"name", "kind", "sft_loss", "reward", "regularized_reward",
"regret", "kl_data", "kl_reference"}, ...], "defaults": {...}}``.

Defaults (u = 1 / min_x w_x, the flows' time unit; see theory/flows.py):

- ``sft_then_rl_exact``: the paper's closed form π*_β(d) (Gibbs tilt of the data, instance β);
- ``sft_then_rl``: SFT flow 5u from ρ, then RL flow 5u with the SFT end policy as reference;
- ``rl_then_sft``: RL flow 5u from ρ (reference ρ), then SFT flow 5u;
- ``alternating``: SFT and RL flows alternating every u for 10u, starting with SFT;
- ``joint``: the flow of L − λJ_β with λ = 1 for 10u;
- recipes (theory/recipes.py, published defaults): ``--recipe-steps`` (200) exact-field ascent
  steps from ρ with learning rate ``--recipe-lr`` × u (0.5 × u).

``nondecoupling flow FILE --pipeline NAME [--json]`` prints the trajectory of one pipeline
(default schedule, ``--points`` saves per phase).
"""

from __future__ import annotations

import json
import math
import sys
import time

from verify import frontier_command
from verify.args import positive_float as positive_number
from verify.args import positive_int
from verify.io import InputError, read_instance, to_jsonable

__all__ = ["add_commands", "compare_rows", "flow_points", "RECIPE_NAMES", "PIPELINE_NAMES"]

PIPELINE_NAMES = ("sft_then_rl", "rl_then_sft", "alternating", "joint")
RECIPE_NAMES = ("grpo", "dr_grpo", "hpt", "luffy", "srft", "relift")
DEFAULT_RECIPE_STEPS = 200
DEFAULT_RECIPE_LR = 0.5
SAMPLED_GROUPS = 512  # groups per step when a recipe's exact field is infeasible
FLOW_FIELDS = ("sft_loss", "reward", "regularized_reward", "kl_data", "kl_reference",
               "sft_grad_norm", "rl_grad_norm", "grad_cosine")


def _row(inst, name, kind, log_pi, seconds):
  import numpy as np

  from theory import frontier
  from theory import objectives as obj
  values = dict(
      sft_loss=obj.sft_loss(inst, log_pi),
      reward=obj.reward(inst, log_pi),
      regularized_reward=obj.regularized_reward(inst, log_pi),
      regret=frontier.decoupling_regret(inst, log_pi),
      kl_data=obj.sft_excess(inst, log_pi),
      kl_reference=obj.expect(inst, obj.kl_rows(log_pi, obj.safe_log(inst.reference))))
  row = {"name": name, "kind": kind}
  row.update({k: float(np.asarray(v)) for k, v in values.items()})
  row["status"] = "ok"
  row["seconds"] = seconds
  return row


def compare_rows(inst, recipe_steps: int = DEFAULT_RECIPE_STEPS,
                 recipe_lr: float = DEFAULT_RECIPE_LR, progress=None) -> list[dict]:
  """Runs every pipeline and recipe on ``inst`` and returns one row per end point."""
  import jax

  from theory import flows, recipes
  unit = float(flows.time_unit(inst))
  jobs = [("sft_then_rl_exact", "exact", lambda: flows.sft_then_rl_exact(inst))]
  for name in PIPELINE_NAMES:
    jobs.append((name, "flow", lambda name=name: flows.run_pipeline(inst, name,
                                                                    n_save=2).final_log_pi))
  for name in RECIPE_NAMES:
    jobs.append((name, "recipe", lambda name=name: recipes.train_recipe(
        inst, name, recipe_steps, recipe_lr * unit)[0]))
  rows = []
  for name, kind, job in jobs:
    if progress:
      progress(name)
    t0 = time.perf_counter()
    try:
      log_pi = jax.block_until_ready(job())
    except recipes.InfeasibleExactField as e:
      # Too many reward levels to enumerate GRPO's std-normalised groups exactly: train with the
      # recipe's unbiased Monte-Carlo estimator instead, and say so in the row.
      log_pi, _ = recipes.train_recipe_sampled(inst, name, recipe_steps, recipe_lr * unit,
                                               jax.random.PRNGKey(0), samples=SAMPLED_GROUPS)
      row = _row(inst, name, "recipe (Monte-Carlo)", jax.block_until_ready(log_pi),
                 time.perf_counter() - t0)
      row["status"] = (f"monte_carlo: exact field infeasible ({e}); estimator averaged over "
                       f"{SAMPLED_GROUPS} groups per step")
      rows.append(row)
      continue
    rows.append(_row(inst, name, kind, log_pi, time.perf_counter() - t0))
  return rows


def flow_points(inst, pipeline: str, points: int) -> dict:
  """The trajectory of one named pipeline (default schedule) as a JSON-ready dict."""
  import numpy as np

  from theory import flows
  sched = flows.default_schedule(pipeline, inst)
  tr = flows.run_flow(inst, sched, n_save=points)
  cols = {k: np.asarray(getattr(tr, k)) for k in ("times", "phase") + FLOW_FIELDS}
  out = []
  for i in range(cols["times"].shape[0]):
    p = {"time": float(cols["times"][i]), "phase": int(cols["phase"][i])}
    p.update({k: float(cols[k][i]) for k in FLOW_FIELDS})
    out.append(p)
  return {"pipeline": pipeline, "time_unit": float(flows.time_unit(inst)), "converged": bool(tr.ok),
          "schedule": {"sft_weight": np.asarray(sched.sft_weight).tolist(),
                       "rl_weight": np.asarray(sched.rl_weight).tolist(),
                       "duration": np.asarray(sched.duration).tolist(),
                       "reset_reference": np.asarray(sched.reset_reference).tolist()},
          "points": out}


def _fmt(v):
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return str(v)
  return f"{v:.6g}"


def _run_compare(args) -> int:
  if args.recipe_steps > 100_000:
    raise InputError(f"--recipe-steps is {args.recipe_steps}, expected at most 100000")
  inst, _ = read_instance(args.file)
  from rich.console import Console
  err = Console(stderr=True)
  with err.status("compare") as status:
    rows = compare_rows(inst, args.recipe_steps, args.recipe_lr,
                        progress=lambda n: status.update(f"compare: {n}"))
  defaults = {"recipe_steps": args.recipe_steps, "recipe_lr_per_time_unit": args.recipe_lr,
              "pipelines": "SFT/RL flows of 5u each; alternating every u over 10u; joint λ=1 10u",
              "time_unit": rows and float(1.0 / min(w for w in inst.prompt_weights.tolist()
                                                    if w > 0))}
  if args.json:
    sys.stdout.write(json.dumps(to_jsonable({"recipes": rows, "defaults": defaults})) + "\n")
    return 0
  from rich.table import Table
  table = Table(title=f"end points on {args.file} (regret: this project's D4)")
  cols = ("name", "kind", "sft_loss", "reward", "regularized_reward", "regret", "kl_data",
          "kl_reference", "seconds")
  for c in cols:
    table.add_column(c, justify="left" if c in ("name", "kind") else "right")
  for r in rows:
    table.add_row(*[r[c] if c in ("name", "kind") else _fmt(r[c]) for c in cols])
  Console(width=None if sys.stdout.isatty() else 200).print(table)
  return 0


def _run_flow(args) -> int:
  if args.points > 10_000:
    raise InputError(f"--points is {args.points}, expected at most 10000")
  inst, _ = read_instance(args.file)
  res = flow_points(inst, args.pipeline, args.points)
  if args.json:
    sys.stdout.write(json.dumps(to_jsonable(res)) + "\n")
    return 0
  from rich.console import Console
  from rich.table import Table
  table = Table(title=f"{args.pipeline} on {args.file} (time unit u = {res['time_unit']:.6g})")
  cols = ("time", "phase") + FLOW_FIELDS
  for c in cols:
    table.add_column(c, justify="right")
  for p in res["points"]:
    table.add_row(*[str(p[c]) if c == "phase" else _fmt(p[c]) for c in cols])
  Console(width=None if sys.stdout.isatty() else 200).print(table)
  return 0


def add_commands(sub) -> None:
  """Adds `compare`, `flow` and `frontier` to the `nondecoupling` sub-parsers."""
  p = sub.add_parser(
      "compare", help="run every pipeline and fusion recipe and compare their end points",
      description="Runs SFT-then-RL (exact and as flows), RL-then-SFT, alternating, joint and "
                  "the fusion recipes (grpo, dr_grpo, hpt, luffy, srft, relift) with documented "
                  "defaults (u = 1/min prompt weight: flows of 5u per phase, alternating every "
                  "u over 10u, joint λ=1 over 10u; recipes: --recipe-steps exact-field steps "
                  "with learning rate --recipe-lr × u) and prints SFT loss, reward, regularised "
                  "reward and decoupling regret (this project's D4).")
  p.add_argument("file", help="instance JSON file")
  p.add_argument("--json", action="store_true", help="print JSON on stdout")
  p.add_argument("--recipe-steps", type=positive_int, default=DEFAULT_RECIPE_STEPS,
                 help=f"outer steps per recipe (default {DEFAULT_RECIPE_STEPS})")
  p.add_argument("--recipe-lr", type=positive_number, default=DEFAULT_RECIPE_LR,
                 help=f"recipe learning rate in units of u (default {DEFAULT_RECIPE_LR})")
  p.set_defaults(func=_run_compare)

  p = sub.add_parser(
      "flow", help="print the trajectory of one pipeline's gradient flows",
      description="Integrates one pipeline (default schedule, see `compare --help`) with "
                  "diffrax and prints time, phase, L, J, J_β, KL to d and to ρ, gradient norms "
                  "and cos∠(∇L, ∇J_β).")
  p.add_argument("file", help="instance JSON file")
  p.add_argument("--pipeline", required=True, choices=PIPELINE_NAMES, help="pipeline name")
  p.add_argument("--points", type=positive_int, default=8,
                 help="saved points per phase (default 8)")
  p.add_argument("--json", action="store_true", help="print JSON on stdout")
  p.set_defaults(func=_run_flow)

  frontier_command.add_frontier_command(sub)

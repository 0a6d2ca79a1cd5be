"""The `frontier` command: the exact SFT-loss/reward frontier of an instance (this project's D4).

``nondecoupling frontier FILE --lambdas a,b,... [--json]`` prints, for each λ ≥ 0, the SFT loss
L(π_λ) and the reward J(π_λ) of π_λ = argmin L − λ J over tabular policies. JSON output is
``{"points": [{"lambda", "sft_loss", "reward"}, ...]}``. Bad input (missing file, broken JSON,
an invalid instance, a bad ``--lambdas``) is one line on stderr and exit status 2.

The module exposes :func:`add_frontier_command`, which ``verify.dynamics_commands`` calls.
"""

from __future__ import annotations

import json
import math
import sys

from verify.io import InputError, read_instance, to_jsonable

__all__ = ["add_frontier_command", "parse_lambdas", "frontier_points", "DEFAULT_LAMBDAS"]

DEFAULT_LAMBDAS = "0,0.1,0.3,1,3,10"
MAX_LAMBDAS = 10_000


def parse_lambdas(text: str) -> list[float]:
  """Parses ``a,b,...`` into finite λ ≥ 0 (raises InputError with a one-line message)."""
  if text is None or not str(text).strip():
    raise InputError("--lambdas is empty, expected comma-separated numbers >= 0")
  out = []
  for i, part in enumerate(str(text).split(",")):
    part = part.strip()
    try:
      value = float(part)
    except ValueError:
      raise InputError(f"--lambdas entry {i} is {part!r}, expected a number >= 0") from None
    if not math.isfinite(value):
      raise InputError(f"--lambdas entry {i} is {part}, expected a finite number >= 0")
    if value < 0:
      raise InputError(f"--lambdas entry {i} is {part}, expected a number >= 0")
    out.append(value)
  if len(out) > MAX_LAMBDAS:
    raise InputError(f"--lambdas has {len(out)} entries, expected at most {MAX_LAMBDAS}")
  return out


def frontier_points(inst, lambdas: list[float]) -> list[dict]:
  """[{"lambda", "sft_loss", "reward"}] on the exact frontier (this project's D4)."""
  import numpy as np

  from theory.frontier import frontier_curve
  sft, rew = frontier_curve(inst, np.asarray(lambdas, np.float64))
  return [{"lambda": float(lam), "sft_loss": float(l_val), "reward": float(j_val)}
          for lam, l_val, j_val in zip(lambdas, np.asarray(sft), np.asarray(rew))]


def _print_table(path: str, points: list[dict], inst) -> None:
  from rich.console import Console
  from rich.table import Table

  from theory.objectives import sft_optimum_loss
  table = Table(title=f"Exact SFT-reward frontier of {path} (this project's D4: "
                      "π_λ = argmin L − λJ)")
  table.add_column("λ", justify="right")
  table.add_column("SFT loss L", justify="right")
  table.add_column("L − L(d)", justify="right")
  table.add_column("reward J", justify="right")
  l_d = float(sft_optimum_loss(inst))
  for p in points:
    table.add_row(f"{p['lambda']:.6g}", f"{p['sft_loss']:.8f}", f"{p['sft_loss'] - l_d:.3e}",
                  f"{p['reward']:.8f}")
  Console().print(table)


def _run(args) -> int:
  lambdas = parse_lambdas(args.lambdas)
  inst, _ = read_instance(args.file)
  points = frontier_points(inst, lambdas)
  if args.json:
    sys.stdout.write(json.dumps(to_jsonable({"points": points}), indent=2) + "\n")
  else:
    _print_table(args.file, points, inst)
  return 0


def add_frontier_command(sub) -> None:
  """Adds ``frontier FILE --lambdas a,b,... [--json]`` to an argparse sub-parser collection."""
  p = sub.add_parser(
      "frontier",
      help="exact SFT-loss/reward Pareto frontier of an instance (this project's D4)",
      description="For each λ ≥ 0, the SFT loss and reward of π_λ = argmin L(π) − λ J(π) over "
                  "tabular policies (exact per-prompt solution, including mass moved to a "
                  "better response outside the data's support). This project's result D4, "
                  "not the paper's.")
  p.add_argument("file", metavar="FILE", help="instance JSON file")
  p.add_argument("--lambdas", default=DEFAULT_LAMBDAS,
                 help=f"comma-separated λ ≥ 0 (default {DEFAULT_LAMBDAS})")
  p.add_argument("--json", action="store_true", help='print {"points": [...]} as JSON')
  p.set_defaults(func=_run)

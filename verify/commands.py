"""Commands of the exact tabular engine: `verify`, `check`, `figures`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from verify.args import non_negative_int, positive_int
from verify.io import InputError

__all__ = ["add_commands", "cmd_verify", "cmd_check", "cmd_figures", "instance_margins"]


def add_commands(sub) -> None:
  p = sub.add_parser(
      "verify", help="check every statement on random instances and search for counterexamples",
      description="Checks every statement of THEORY.md parts B, C and D on thousands of random "
                  "instances (families: dense, sparse, tied, gold, reference, extreme_beta), "
                  "searches for counterexamples with Hypothesis, prints a table and writes "
                  "report.json and report.md (and one instance file per counterexample). Exit 0 "
                  "exactly when every outcome is as expected.")
  p.add_argument("--instances", type=positive_int, default=6144,
                 help="random instances per statement (default 6144)")
  p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
  p.add_argument("--search-examples", type=non_negative_int, default=300,
                 help="Hypothesis examples per statement (default 300; 0 disables the search)")
  p.add_argument("--out", default="results", help="output directory (default results/)")
  p.add_argument("--only", default=None,
                 help="comma-separated statement names or prefixes (e.g. C3,D1) to check")
  p.set_defaults(func=cmd_verify)

  p = sub.add_parser("check", help="every quantity and statement margin for one instance file",
                     description="Reads an instance file and prints every quantity (SFT losses, "
                                 "C₁, rewards, the RL value, bounds, β_c) and the margin of every "
                                 "statement (π₂ = d for RL-then-SFT).")
  p.add_argument("file", help="instance JSON file")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
  p.set_defaults(func=cmd_check)

  p = sub.add_parser("figures", help="write every figure as PNG and PDF",
                     description="Writes every figure (theorems, dynamics, recipes, bridge) as "
                                 "PNG and PDF into --out.")
  p.add_argument("--out", default="figures/out", help="output directory (default figures/out)")
  p.add_argument("--only", default=None, help="comma-separated figure names to write")
  p.set_defaults(func=cmd_figures)


# --- verify ----------------------------------------------------------------------------------


def _select(statements, only: str | None):
  if not only:
    return statements
  keys = [k.strip() for k in only.split(",") if k.strip()]
  chosen = tuple(s for s in statements
                 if any(s.name.startswith(k) or s.name.split(" ", 1)[-1] == k for k in keys))
  if not chosen:
    raise InputError(f"--only {only!r} matches no statement")
  return chosen


def cmd_verify(args) -> int:
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

  from verify.io import atomic_write_json, atomic_write_text
  from verify.run import report_markdown, run_verify
  from verify.statements import all_statements
  from verify.sweep import maybe_initialize_distributed, use_every_core

  use_every_core()  # one CPU device per core: the instance batches are split over them
  maybe_initialize_distributed()
  statements = _select(all_statements(), args.only)
  out = Path(args.out)
  if out.exists() and not out.is_dir():
    raise InputError(f"--out {out}: exists and is not a directory")
  err = console(stderr=True)
  with Progress(TextColumn("[bold]verify[/]"), BarColumn(), TextColumn("{task.completed}/"
                "{task.total}"), TextColumn("{task.description}"), TimeElapsedColumn(),
                console=err, transient=False) as bar:
    task = bar.add_task("", total=len(statements))
    done = [0]

    def progress(name):
      if done[0]:
        bar.advance(task)
      done[0] += 1
      bar.update(task, description=name)

    report = run_verify(args.instances, args.seed, args.search_examples, statements, progress)
    bar.advance(task)

  import jax
  if jax.process_index() == 0:
    _print_verify_table(report)
    files = {}
    for s in report["statements"]:
      if s["counterexample"]:
        fname = s["name"].replace(" ", "_") + ".json"
        files[out / "counterexamples" / fname] = s["counterexample"]["instance"]
        s["counterexample_file"] = str(Path("counterexamples") / fname)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    for path, obj in files.items():
      atomic_write_json(path, obj)
    console().print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
  return 0 if report["all_as_expected"] else 1


def _print_verify_table(report: dict) -> None:
  from rich.table import Table

  from verify.run import format_number as _fmt

  table = Table(title=f"nondecoupling verify — seed {report['seed']}, "
                      f"{report['instances_per_statement']} instances/statement, "
                      f"{report['devices']} device(s), {report['seconds']:.1f} s")
  for col in ("statement", "source", "expected", "outcome", "instances", "worst margin",
              "tightness"):
    table.add_column(col, justify="right" if col in ("instances", "worst margin",
                                                    "tightness") else "left")
  for s in report["statements"]:
    outcome = "holds" if s["holds"] else "refuted"
    style = "green" if s["as_expected"] else "bold red"
    table.add_row(s["name"], s["source"], s["expected"], f"[{style}]{outcome}[/]",
                  str(s["instances"]), _fmt(s["worst_margin"]), _fmt(s["tightness"]))
  con = console()
  con.print(table)
  for s in report["statements"]:
    c = s["counterexample"]
    if c and s["expected"] == "refuted":
      con.print(f"[bold]{s['name']}[/] refuted by a counterexample found by "
                    f"{s['counterexample_source']} (J(π₁) − J(π₂) = {c['margin']:.3g}); "
                    "instance file:")
      con.print_json(json.dumps(c["instance"]))
    elif c:
      con.print(f"[bold red]{s['name']} failed unexpectedly[/]: margin {c['margin']:.3g}")
  verdict = "every outcome as expected" if report["all_as_expected"] else "UNEXPECTED outcomes"
  con.print(f"[bold]{verdict}[/]")


# --- check -----------------------------------------------------------------------------------


def _all_verdicts(inst):
  from theory.objectives import safe_log
  from verify.statements import STATEMENTS
  probe = safe_log(inst.data)
  return [s.fn(inst, probe) for s in STATEMENTS]


def instance_margins(inst) -> dict:
  """{statement name: {"lhs", "rhs", "margin", "applies", "holds"}} at probe π = d."""
  import jax
  import numpy as np

  from verify.statements import STATEMENTS, holds_mask

  verdicts = jax.jit(_all_verdicts)(inst)
  out = {}
  for s, v in zip(STATEMENTS, verdicts):
    m = float(v.margin)
    applies = bool(v.applies)
    out[s.name] = {"lhs": float(v.lhs), "rhs": float(v.rhs), "margin": m, "applies": applies,
                   "holds": bool(holds_mask(s, np.asarray(m))) if applies else None,
                   "source": s.source, "expected": s.expected}
  return out


def console(stderr: bool = False):
  """A rich Console that keeps tables readable when output is not a terminal."""
  from rich.console import Console
  probe = Console(stderr=stderr)
  return probe if probe.is_terminal else Console(stderr=stderr, width=160)


def cmd_check(args) -> int:
  import jax

  from theory.quantities import QUANTITY_DOCS, check_quantities
  from verify.io import read_instance, to_jsonable

  inst, labels = read_instance(args.file)
  q = {k: float(v) for k, v in jax.jit(check_quantities)(inst).items()}
  if not math.isfinite(q["beta_critical"]):
    q["beta_critical"] = None
  margins = instance_margins(inst)
  shape = {"prompts": inst.shape[0], "responses": inst.shape[1], "beta": float(inst.beta)}
  if args.json:
    obj = dict(q)
    obj["instance"] = shape
    obj["statements"] = margins
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")
    return 0
  from rich.table import Table

  out = console()
  t = Table(title=f"{args.file}: |X| = {shape['prompts']}, |Y| = {shape['responses']}, "
                  f"β = {shape['beta']:g}")
  t.add_column("quantity")
  t.add_column("value", justify="right")
  t.add_column("meaning")
  for k, v in q.items():
    t.add_row(k, "—" if v is None else f"{v:.10g}", QUANTITY_DOCS[k])
  out.print(t)
  t = Table(title="statements at π₁ = π*_β(ρ), π₂ = d (margin ≥ 0: holds)")
  for col in ("statement", "source", "lhs", "rhs", "margin", "result"):
    t.add_column(col, justify="right" if col in ("lhs", "rhs", "margin") else "left")
  for name, m in margins.items():
    if not m["applies"]:
      result = "n/a (hypothesis not met)"
    elif m["holds"]:
      result = "[green]holds[/]"
    else:
      result = "[bold red]fails[/]" + (" (expected: refuted)" if m["expected"] == "refuted"
                                       else "")
    t.add_row(name, m["source"], f"{m['lhs']:.6g}", f"{m['rhs']:.6g}", f"{m['margin']:.3g}",
              result)
  out.print(t)
  return 0


# --- figures ---------------------------------------------------------------------------------


def cmd_figures(args) -> int:
  from rich.progress import track

  import matplotlib.pyplot as plt

  from figures import all_figures

  figs = all_figures()
  names = list(figs)
  if args.only:
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in figs]
    if unknown:
      raise InputError(f"--only: unknown figure {unknown[0]!r} (known: {', '.join(names)})")
    names = wanted
  out = Path(args.out)
  if out.exists() and not out.is_dir():
    raise InputError(f"--out {out}: exists and is not a directory")
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for name in track(names, description="figures", console=console(stderr=True)):
    fig = figs[name]()
    for ext in ("png", "pdf"):
      tmp = out / f".{name}.{ext}.tmp"
      fig.savefig(tmp, format=ext, dpi=150 if ext == "png" else None, bbox_inches="tight")
      tmp.replace(out / f"{name}.{ext}")
      written.append(out / f"{name}.{ext}")
    plt.close(fig)
  console().print(f"wrote {len(written)} files to {out}")
  return 0

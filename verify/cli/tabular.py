"""The commands of the exact tabular engine: `verify` and `check`."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ...theory.quantities import QUANTITY_DOCS, check_quantities
from ..checking import instance_margins, run_verify as run_statements
from ..devices import maybe_initialize_distributed, use_every_core
from ..errors import InputError
from ..provenance import provenance
from ..registry import all_statements
from ..reports import (
  StagedOutput,
  check_output_dir,
  counterexample_file,
  format_number,
  report_markdown,
)
from ..stored_programs import stored_jit
from .console import cell, console, escape, print_json
from .limits import load_input, require_verify
from .tree_commands import run_tree_check

__all__ = ["run_verify", "run_check"]


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


def run_verify(args) -> int:
  use_every_core()  # one CPU device per core: the instance batches are split over them
  maybe_initialize_distributed()
  statements = _select(all_statements(), args.only)
  out = Path(args.out)
  check_output_dir(out)
  require_verify(args, len(statements))
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

    report = run_statements(args.instances, args.seed, args.search_examples, statements, progress)
    bar.advance(task)

  if jax.process_index() == 0:
    report["provenance"] = provenance()
    # The report and this run's counterexamples are moved into place together; the folder of
    # counterexamples replaces the old one as a whole (no stale file of an earlier run remains).
    with StagedOutput(out, replace=("counterexamples",)) as staged:
      for s in report["statements"]:
        if s["counterexample"]:
          fname = s["name"].replace(" ", "_") + ".json"
          staged.write_json(Path("counterexamples") / fname, counterexample_file(s["counterexample"]))
          s["counterexample_file"] = str(Path("counterexamples") / fname)
      staged.write_json("report.json", report)
      staged.write_text("report.md", report_markdown(report))
      staged.commit()
    _print_verify_table(report)
    console().print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
  return 0 if report["all_as_expected"] else 1


def _print_verify_table(report: dict) -> None:
  table = Table(title=escape(f"nondecoupling verify — seed {report['seed']}, "
                             f"{report['instances_per_statement']} instances/statement, "
                             f"{report['devices']} device(s), {report['seconds']:.1f} s"))
  right = ("instances", "worst margin", "in slacks", "tightness")
  for col in ("statement", "source", "expected", "outcome") + right:
    table.add_column(col, justify="right" if col in right else "left")
  for s in report["statements"]:
    outcome = "holds" if s["holds"] else "refuted"
    style = "green" if s["as_expected"] else "bold red"
    table.add_row(escape(s["name"]), escape(s["source"]), escape(s["expected"]),
                  f"[{style}]{outcome}[/]", str(s["instances"]),
                  escape(format_number(s["worst_margin"])),
                  escape(format_number(s["worst_margin_in_slacks"])),
                  escape(format_number(s["tightness"])))
  con = console()
  con.print(table)
  con.print("worst margin: the smallest margin over the applicable instances; in slacks: the "
            "smallest margin / rounding slack (below −1: a failure beyond rounding)")
  for s in report["statements"]:
    c = s["counterexample"]
    if s["message"]:
      con.print(f"[bold red]{escape(s['message'])}[/]")
    if c and s["expected"] == "refuted":
      con.print(f"[bold]{escape(s['name'])}[/] refuted by a counterexample found by "
                f"{escape(str(s['counterexample_source']))} (J(π₁) − J(π₂) = {c['margin']:.3g}, "
                f"rounding slack {c['slack']:.3g}); instance file:")
      con.print_json(json.dumps(c["instance"]))
    elif c:
      con.print(f"[bold red]{escape(s['name'])} failed unexpectedly[/]: margin {c['margin']:.3g}, "
                f"rounding slack {c['slack']:.3g}")
  verdict = "every outcome as expected" if report["all_as_expected"] else "UNEXPECTED outcomes"
  con.print(f"[bold]{verdict}[/]")


# --- check -----------------------------------------------------------------------------------


def _as_distributions(inst):
  """The instance with every row of d, ρ and w divided by its sum.

  The format allows rows summing to 1 within 1e-9; the statements hold for distributions, and
  their rounding bounds assume rows that sum to 1 up to rounding.
  """
  norm = lambda a: a / jnp.sum(a, axis=-1, keepdims=True)
  return dataclasses.replace(inst, prompt_weights=norm(inst.prompt_weights), data=norm(inst.data),
                             reference=norm(inst.reference))


def _nonfinite(q: dict) -> str | None:
  """The first quantity that is not a finite number (β_c may be absent: NaN means none)."""
  for k, v in q.items():
    if k != "beta_critical" and not math.isfinite(v):
      return f"{k} is {v}"
  return None


def run_check(args) -> int:
  loaded = load_input(args)
  if not isinstance(loaded, tuple):  # a tree file
    return run_tree_check(args, loaded)
  inst, labels = loaded
  inst = _as_distributions(inst)
  q = {k: float(v) for k, v in stored_jit(check_quantities)(inst).items()}
  bad = _nonfinite(q)
  if bad:
    print(f"error: {args.file}: {bad}, expected a finite number inside the valid domain (a bug: "
          "please report the instance)", file=sys.stderr)
    return 1
  if not math.isfinite(q["beta_critical"]):
    q["beta_critical"] = None  # documented: no critical β exists
  margins = instance_margins(inst)
  shape = {"prompts": inst.shape[0], "responses": inst.shape[1], "beta": float(inst.beta)}
  if args.json:
    obj = dict(q)
    obj["instance"] = shape
    obj["statements"] = {k: {f: (v if not (isinstance(v, float) and not math.isfinite(v))
                                 else str(v)) for f, v in m.items()} for k, m in margins.items()}
    obj["provenance"] = provenance()
    print_json(obj, indent=2)
    return 0
  out = console()
  t = Table(title=escape(f"{args.file}: |X| = {shape['prompts']}, |Y| = {shape['responses']}, "
                         f"β = {shape['beta']:g}"))
  t.add_column("quantity")
  t.add_column("value", justify="right")
  t.add_column("meaning")
  for k, v in q.items():
    t.add_row(escape(k), escape(cell(v, ".10g")), escape(QUANTITY_DOCS[k]))
  out.print(t)
  t = Table(title=escape("statements at π₁ = π*_β(ρ), π₂ = d (holds: margin ≥ −slack, the "
                         "rounding bound)"))
  for col in ("statement", "source", "lhs", "rhs", "margin", "slack", "result"):
    t.add_column(col, justify="right" if col in ("lhs", "rhs", "margin", "slack") else "left")
  for name, m in margins.items():
    if not m["applies"]:
      result = "n/a (hypothesis not met)"
    elif m["holds"]:
      result = "[green]holds[/]"
    else:
      result = "[bold red]fails[/]" + (" (expected: refuted)" if m["expected"] == "refuted"
                                       else "")
      if m.get("message"):
        result += " " + escape(m["message"])
    t.add_row(escape(name), escape(m["source"]), escape(f"{m['lhs']:.6g}"),
              escape(f"{m['rhs']:.6g}"), escape(f"{m['margin']:.3g}"),
              escape(f"{m['slack']:.2g}"), result)
  out.print(t)
  return 0

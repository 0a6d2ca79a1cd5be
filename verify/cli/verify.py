"""The `verify` command: sweep and search every statement, write the report and counterexamples."""

from __future__ import annotations

import json
from pathlib import Path

import jax
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..checking import run_verify as run_statements
from ..devices import fuse_row_reductions, maybe_initialize_distributed, use_every_core
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
from .console import console, escape
from .limits import require_verify

__all__ = ["run_verify"]


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
  fuse_row_reductions()  # XLA:CPU reductions fused with their loops (before JAX starts)
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

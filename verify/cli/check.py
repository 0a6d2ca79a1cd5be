"""The `check` command: every quantity and statement margin of one instance file, tabular or tree."""

from __future__ import annotations

import dataclasses
import math
import sys

import jax
import numpy as np
from rich.table import Table

from ...theory.quantities import QUANTITY_DOCS, check_quantities
from ..margins import instance_margins
from ..provenance import provenance
from ..stored_programs import stored_jit
from .console import cell, console, escape, print_json
from .limits import load_input
from .tree_commands import run_tree_check

__all__ = ["run_check"]


def _as_distributions(inst):
  """The instance with every row of d, ρ and w divided by its sum.

  The format allows rows summing to 1 within 1e-9; the statements hold for distributions, and
  their rounding bounds assume rows that sum to 1 up to rounding.
  """
  def norm(a):  # in NumPy: nothing is compiled before the stored programs load
    a = np.asarray(a)
    return jax.device_put(a / np.sum(a, axis=-1, keepdims=True))

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

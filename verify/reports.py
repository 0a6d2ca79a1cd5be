"""Writing results: JSON-ready values, atomic files, and the Markdown report of `verify`."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_text", "atomic_write_json", "to_jsonable", "format_number",
           "report_markdown"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes a file whole or not at all (temporary file + rename)."""
  p = Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, p)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def to_jsonable(x: Any) -> Any:
  """Converts arrays and numpy scalars to JSON values (non-finite floats become null)."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
    return to_jsonable(np.asarray(x).tolist())
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, (bool, int, str)) or x is None:
    return x
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return to_jsonable(x.item())
  raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def format_number(x, spec=".3g"):
  """A report cell: the number, or a dash when there is none."""
  return "—" if x is None else format(x, spec)



def report_markdown(report: dict) -> str:
  """The Markdown report (same content as the JSON, as a table plus counterexamples)."""
  lines = [
      "# nondecoupling verify", "",
      f"Seed {report['seed']}, {report['instances_per_statement']} random instances per "
      f"statement (families: {', '.join(report['families'])}), Hypothesis search of "
      f"{report['search_examples']} examples per statement, {report['devices']} device(s), "
      f"{report['seconds']:.1f} s.", "",
      "Source `paper` = arXiv 2601.07389 v1 as printed; `ours` = this project's statements "
      "(not the paper's).", "",
      "| statement | source | expected | outcome | instances | worst margin | tightness |",
      "|---|---|---|---|---|---|---|",
  ]
  for s in report["statements"]:
    outcome = ("holds" if s["holds"] else "refuted") + ("" if s["as_expected"] else " (UNEXPECTED)")
    lines.append(f"| {s['name']}: {s['title']} | {s['source']} | {s['expected']} | {outcome} | "
                 f"{s['instances']} | {format_number(s['worst_margin'])} | "
                 f"{format_number(s['tightness'])} |")
  cx = [s for s in report["statements"] if s["counterexample"]]
  if cx:
    lines += ["", "## Counterexamples", ""]
    for s in cx:
      c = s["counterexample"]
      lines += [f"### {s['name']} (found by {s['counterexample_source']})", "",
                f"lhs = {c['lhs']:.6g}, rhs = {c['rhs']:.6g}, margin = {c['margin']:.3g}. "
                "Re-check with `nondecoupling check FILE`:", "", "```json",
                json.dumps(c["instance"], indent=1), "```", ""]
  lines += ["", f"All outcomes as expected: **{report['all_as_expected']}**", ""]
  return "\n".join(lines)

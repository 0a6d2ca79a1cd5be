"""Console output of the commands: rich consoles, table cells and JSON on stdout."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.markup import escape

from ..reports import json_text

__all__ = ["console", "escape", "cell", "print_json"]


def console(stderr: bool = False) -> Console:
  """A rich Console that keeps tables readable when output is not a terminal."""
  probe = Console(stderr=stderr)
  return probe if probe.is_terminal else Console(stderr=stderr, width=160)


def cell(v, spec: str = ".6g") -> str:
  """A table cell for a number (a dash for None, the name for ±inf and NaN)."""
  if v is None:
    return "—"
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return format(v, spec)


def print_json(obj, indent: int | None = None) -> None:
  """Writes one JSON document on stdout, strictly (see :func:`verify.reports.to_jsonable`).

  The whole document is built before anything is written, so a refused value (a NaN where a
  number is expected) leaves stdout empty.
  """
  sys.stdout.write(json_text(obj, "output", indent))

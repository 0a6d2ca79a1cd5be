"""A checkable statement: its name, source, expected outcome, kind and how to evaluate it.

Sources: ``paper`` (arXiv 2601.07389 v1, as printed) or ``ours`` (this project's statements, and
the repaired Theorem 4.1). Expected: ``holds`` or ``refuted``. A statement fails on an instance
only when its margin is below minus the rounding bound its Verdict carries for that instance
(``slack``; strict statements: at or below), or when the margin is not a number; instances where
its hypothesis does not apply are not counted. How each slack is computed is documented in
:mod:`nondecoupling.theory.verdict`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from ..theory.instance import Instance
from ..theory.verdict import Verdict, fails

__all__ = ["Statement", "holds_mask", "failure_mask", "verdict_row"]


@dataclasses.dataclass(frozen=True)
class Statement:
  """One checkable statement.

  Attributes:
    name: short id, e.g. ``"C3 theorem_4_1_as_printed"``.
    title: one line for tables.
    source: ``"paper"`` or ``"ours"``.
    expected: ``"holds"`` or ``"refuted"``.
    kind: ``"identity"``, ``"bound"`` (lhs ≤ rhs or lhs ≥ rhs; tightness = lhs/rhs) or
      ``"strict"``.
    fn: unbatched ``(Instance, probe_log_pi [X, Y]) -> Verdict``.
    uses_probe: whether ``fn`` depends on the probe policy (the search then draws one).
    check: optional batched override ``(batch Instance, key) -> Verdict`` of [B] arrays, for
      statements that need more than one instance-and-policy (dynamics).
    instances: with ``check``, optional ``(batch, key) -> (instances, probes)``: what ``check``
      evaluated, in the order of its verdicts (random trees for the token-level statements), so
      that a failure is written as a file ``check`` re-reads.
  """

  name: str
  title: str
  source: str
  expected: str
  kind: str
  fn: Callable[[Instance, jax.Array], Verdict] | None
  uses_probe: bool = False
  check: Callable | None = None
  instances: Callable | None = None

  @property
  def strict(self) -> bool:
    return self.kind == "strict"


def failure_mask(stmt: Statement, margin, slack) -> np.ndarray:
  """Elementwise: does the statement fail at this margin, beyond its rounding slack? (NaN fails.)"""
  return np.asarray(fails(np.asarray(margin, np.float64), np.asarray(slack, np.float64),
                          stmt.strict))


def holds_mask(stmt: Statement, margin, slack) -> np.ndarray:
  """Elementwise: not :func:`failure_mask` (the margin is within rounding of holding, or above)."""
  return ~failure_mask(stmt, margin, slack)


def verdict_row(stmt: Statement, verdict: Verdict) -> dict:
  """One statement's verdict on one instance as plain numbers (what `check` reports).

  Returns:
    ``lhs``, ``rhs``, ``margin``, ``slack`` (floats), ``applies``, ``holds`` (None where it does
    not apply), ``source``, ``expected``; a non-finite value of an applicable statement makes it
    fail, with a ``message`` naming the values.
  """
  m, sl, applies = float(verdict.margin), float(verdict.slack), bool(verdict.applies)
  row = {"lhs": float(verdict.lhs), "rhs": float(verdict.rhs), "margin": m, "slack": sl,
         "applies": applies, "holds": None, "source": stmt.source, "expected": stmt.expected}
  if applies:
    row["holds"] = bool(holds_mask(stmt, np.asarray(m), np.asarray(sl)))
    bad = [k for k in ("lhs", "rhs", "margin", "slack") if not np.isfinite(row[k])]
    if bad:
      row["holds"] = False
      row["message"] = f"non-finite {', '.join(f'{k} = {row[k]}' for k in bad)}"
  return row

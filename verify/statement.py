"""A checkable statement: its name, source, expected outcome, kind and how to evaluate it.

Sources: ``paper`` (arXiv 2601.07389 v1, as printed) or ``ours`` (this project's statements, and
the repaired Theorem 4.1). Expected: ``holds`` or ``refuted``. A statement holds on an instance
when ``margin >= -tolerance`` (``margin > tolerance`` when strict); instances where its hypothesis
does not apply are not counted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from ..theory.instance import Instance
from ..theory.verdict import Verdict

__all__ = ["Statement", "holds_mask"]


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
    tolerance: see module docstring.
    uses_probe: whether ``fn`` depends on the probe policy (the search then draws one).
    check: optional batched override ``(batch Instance, key) -> margins [B]`` or a Verdict of
      [B] arrays, for statements that need more than one instance-and-policy (dynamics).
  """

  name: str
  title: str
  source: str
  expected: str
  kind: str
  fn: Callable[[Instance, jax.Array], Verdict] | None
  tolerance: float
  uses_probe: bool = False
  check: Callable | None = None

  @property
  def strict(self) -> bool:
    return self.kind == "strict"


def holds_mask(stmt: Statement, margin):
  """Elementwise: does the statement hold at this margin?"""
  if stmt.strict:
    return margin > stmt.tolerance
  return margin >= -stmt.tolerance

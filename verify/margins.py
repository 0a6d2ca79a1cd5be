"""Every tabular statement's margin on one instance, at the probe π = d (the `check` command).

One stored program (:func:`.stored_programs.stored_jit`) evaluates all statements of
:data:`.registry.STATEMENTS`; each row says whether the statement applies and holds (margin ≥
−slack, :func:`.statement.holds_mask`).
"""

from __future__ import annotations

from ..theory.objectives import safe_log
from .registry import STATEMENTS
from .statement import verdict_row
from .stored_programs import stored_jit

__all__ = ["instance_margins"]


def _all_verdicts(inst):
  probe = safe_log(inst.data)
  return [s.fn(inst, probe) for s in STATEMENTS]


def instance_margins(inst) -> dict:
  """{statement name: {"lhs", "rhs", "margin", "slack", "applies", "holds", ...}} at probe π = d.

  A non-finite lhs, rhs or margin of an applicable statement is a failure with a ``message``.

  Args:
    inst: one (unbatched) instance.

  Returns:
    A dict by statement name of dicts with ``lhs``, ``rhs``, ``margin``, ``slack`` (floats),
    ``applies``, ``holds`` (bool, None where it does not apply), ``source``, ``expected`` and,
    for a non-finite value, ``message``.

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> row = instance_margins(inst)["B1 sft_excess_is_kl"]
    >>> row["applies"], row["holds"]
    (True, True)
  """
  verdicts = stored_jit(_all_verdicts)(inst)
  return {s.name: verdict_row(s, v) for s, v in zip(STATEMENTS, verdicts)}

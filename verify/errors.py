"""The errors the command line reports as one line (no heavy imports: it loads this first)."""

from __future__ import annotations

__all__ = ["InputError", "OutputError"]


class InputError(ValueError):
  """Bad user input (file, JSON, field, option, a resource limit the job does not fit);
  the message is one line naming it and the rule. The command line exits with status 2."""


class OutputError(ValueError):
  """A result that cannot be reported as it stands, e.g. a non-finite number where a number is
  expected (callers with no value pass None). The command line exits with status 1."""

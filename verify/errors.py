"""The error of bad user input (no heavy imports: the command line loads this first)."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
  """Bad user input (file, JSON, field, option); the message is one line naming it and the rule."""

"""argparse value types shared by every command: bad values raise InputError (one line, exit 2)."""

from __future__ import annotations

import math

from verify.io import InputError

__all__ = ["positive_int", "non_negative_int", "positive_float"]


def _int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise InputError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
  """A whole number > 0."""
  v = _int(text)
  if v <= 0:
    raise InputError(f"expected a whole number > 0, got {v}")
  return v


def non_negative_int(text: str) -> int:
  """A whole number >= 0."""
  v = _int(text)
  if v < 0:
    raise InputError(f"expected a whole number >= 0, got {v}")
  return v


def positive_float(text: str) -> float:
  """A finite number > 0."""
  try:
    v = float(text)
  except ValueError:
    raise InputError(f"expected a number, got {text!r}") from None
  if not (math.isfinite(v) and v > 0):
    raise InputError(f"expected a finite number > 0, got {text}")
  return v

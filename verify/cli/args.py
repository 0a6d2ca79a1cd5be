"""argparse value types shared by every command: bad values raise InputError (one line, exit 2)."""

from __future__ import annotations

import argparse
import math

from ..errors import InputError

__all__ = ["positive_int", "non_negative_int", "positive_float", "parse_lambdas", "MAX_LAMBDAS",
           "OptionValueError"]

MAX_LAMBDAS = 10_000


class OptionValueError(argparse.ArgumentTypeError, InputError):
  """A bad option value: argparse keeps this message ("argument --x: <message>") instead of its
  generic "invalid <type> value"; outside argparse it is an InputError."""


def _int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise OptionValueError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
  """A whole number > 0."""
  v = _int(text)
  if v <= 0:
    raise OptionValueError(f"expected a whole number > 0, got {v}")
  return v


def non_negative_int(text: str) -> int:
  """A whole number >= 0."""
  v = _int(text)
  if v < 0:
    raise OptionValueError(f"expected a whole number >= 0, got {v}")
  return v


def positive_float(text: str) -> float:
  """A finite number > 0."""
  try:
    v = float(text)
  except ValueError:
    raise OptionValueError(f"expected a number, got {text!r}") from None
  if not (math.isfinite(v) and v > 0):
    raise OptionValueError(f"expected a finite number > 0, got {text}")
  return v


def parse_lambdas(text: str) -> list[float]:
  """Parses ``a,b,...`` into finite λ ≥ 0 (raises InputError with a one-line message)."""
  if text is None or not str(text).strip():
    raise OptionValueError("--lambdas is empty, expected comma-separated numbers >= 0")
  out = []
  for i, part in enumerate(str(text).split(",")):
    part = part.strip()
    try:
      value = float(part)
    except ValueError:
      raise OptionValueError(f"--lambdas entry {i} is {part!r}, expected a number >= 0") from None
    if not math.isfinite(value):
      raise OptionValueError(f"--lambdas entry {i} is {part}, expected a finite number >= 0")
    if value < 0:
      raise OptionValueError(f"--lambdas entry {i} is {part}, expected a number >= 0")
    out.append(value)
  if len(out) > MAX_LAMBDAS:
    raise OptionValueError(f"--lambdas has {len(out)} entries, expected at most {MAX_LAMBDAS}")
  return out

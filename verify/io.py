"""Instance files (JSON): read with validation, written whole or not at all.

Instance file format::

  {"beta": 0.5,
   "prompt_weights": [0.5, 0.5],
   "data": [[...], [...]],          # rows sum to 1
   "reward": [[...], [...]],
   "reference": [[...], [...]],     # optional, defaults to data
   "prompts": ["...", "..."],       # optional labels
   "responses": ["...", "..."]}     # optional labels
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..theory.instance import Instance, InstanceError, make_instance, validate
from .errors import InputError
from .reports import atomic_write_json

__all__ = [
    "InputError", "read_instance", "instance_from_dict", "instance_to_dict", "write_instance",
]


_ALLOWED = {"beta", "prompt_weights", "data", "reward", "reference", "prompts", "responses"}


def _as_float_array(obj: dict, key: str, ndim: int) -> np.ndarray:
  value = obj[key]
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    kind = "list of numbers" if ndim == 1 else "list of rows of numbers"
    raise InputError(f"{key} must be a {kind} (rows of equal length)") from None
  if arr.ndim != ndim:
    kind = "a list of numbers" if ndim == 1 else "a list of rows (2-D)"
    raise InputError(f"{key} must be {kind}, got {arr.ndim}-D")
  return arr


def instance_from_dict(obj: Any) -> tuple[Instance, dict]:
  """Validates a parsed instance object.

  Returns:
    (instance, labels) with labels = {"prompts": [...] or None, "responses": [...] or None}.

  Raises:
    InputError / InstanceError: one-line message naming the field and the rule.
  """
  if not isinstance(obj, dict):
    raise InputError("instance must be a JSON object")
  for key in ("beta", "prompt_weights", "data", "reward"):
    if key not in obj:
      raise InputError(f"{key} is missing, expected it in the instance object")
  unknown = sorted(set(obj) - _ALLOWED)
  if unknown:
    raise InputError(f"{unknown[0]} is not a known field (known: {', '.join(sorted(_ALLOWED))})")
  beta = obj["beta"]
  if isinstance(beta, bool) or not isinstance(beta, (int, float)):
    raise InputError("beta must be a number")
  w = _as_float_array(obj, "prompt_weights", 1)
  d = _as_float_array(obj, "data", 2)
  r = _as_float_array(obj, "reward", 2)
  ref = _as_float_array(obj, "reference", 2) if obj.get("reference") is not None else None
  labels = {}
  for key, n in (("prompts", w.shape[0]), ("responses", d.shape[1] if d.ndim == 2 else 0)):
    v = obj.get(key)
    if v is not None:
      if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise InputError(f"{key} must be a list of strings")
      if len(v) != n:
        raise InputError(f"{key} has {len(v)} labels, expected {n}")
    labels[key] = v
  inst = make_instance(w, d, r, float(beta), reference=ref, dtype=np.float64)
  validate(inst)
  return inst, labels


def read_instance(path: str | os.PathLike) -> tuple[Instance, dict]:
  """Reads and validates an instance file (see module docstring)."""
  p = Path(path)
  if not p.exists():
    raise InputError(f"{p}: no such file")
  if p.is_dir():
    raise InputError(f"{p}: is a directory, expected an instance JSON file")
  try:
    text = p.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"{p}: cannot read ({e.__class__.__name__})") from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"{p}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  try:
    return instance_from_dict(obj)
  except (InputError, InstanceError) as e:
    raise type(e)(f"{p}: {e}") from None


def instance_to_dict(instance: Instance, prompts=None, responses=None) -> dict:
  """The JSON object of an (unbatched, unpadded) instance; always writes `reference`."""
  out = {
      "beta": float(instance.beta),
      "prompt_weights": np.asarray(instance.prompt_weights, np.float64).tolist(),
      "data": np.asarray(instance.data, np.float64).tolist(),
      "reward": np.asarray(instance.reward, np.float64).tolist(),
      "reference": np.asarray(instance.reference, np.float64).tolist(),
  }
  if prompts is not None:
    out["prompts"] = list(prompts)
  if responses is not None:
    out["responses"] = list(responses)
  return out


def write_instance(path: str | os.PathLike, instance: Instance, prompts=None,
                   responses=None) -> None:
  """Writes an instance file whole (validated first: an invalid instance is never written)."""
  validate(instance)
  atomic_write_json(path, instance_to_dict(instance, prompts, responses))

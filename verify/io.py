"""Instance files (JSON): read strictly and within bounds, written whole or not at all.

Instance file format::

  {"beta": 0.5,
   "prompt_weights": [0.5, 0.5],
   "data": [[...], [...]],          # rows sum to 1
   "reward": [[...], [...]],
   "reference": [[...], [...]],     # optional (or null), defaults to data
   "prompts": ["...", "..."],       # optional labels
   "responses": ["...", "..."]}     # optional labels

Reading is defensive, because an instance file may come from anywhere:

- only a regular file is read (never a pipe, a device or a socket, which could block or never
  end), and at most ``max_bytes`` of it (:data:`DEFAULT_MAX_BYTES` unless raised);
- the text must be UTF-8 JSON nested at most :data:`MAX_NESTING` levels deep (checked before
  parsing), with no key given twice in one object;
- every number must be a finite float64 (a literal such as ``1e400`` or an integer of hundreds of
  digits is refused, naming the field); ``NaN`` and ``Infinity`` reach :func:`validate`, which
  names the entry; every element of ``prompt_weights``, ``data``, ``reward`` and ``reference`` is
  checked to be a number (a string or a boolean is refused, never converted).

Every refusal is an :class:`InputError` (or the theory's ``InstanceError``) with one line naming the
file, the field and the rule.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ..theory.instance import Instance, InstanceError, make_instance, validate
from .errors import InputError
from .reports import atomic_write_json

__all__ = [
    "InputError", "read_instance", "read_bounded", "parse_instance", "parse_json_strict",
    "json_nesting_depth", "instance_from_dict", "instance_to_dict", "write_instance",
    "DEFAULT_MAX_BYTES", "MAX_NESTING",
]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # 256 MiB; --max-bytes raises it
MAX_NESTING = 32  # an instance needs 3 levels (object, list of rows, row)
_SCAN_CHUNK = 1 << 22  # bytes per step of the nesting scan (its temporaries are ~10x this)

_ALLOWED = {"beta", "prompt_weights", "data", "reward", "reference", "prompts", "responses"}
_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


# --- reading bytes -----------------------------------------------------------------------------


def _not_regular(p: Path, mode: int) -> InputError:
  if stat.S_ISDIR(mode):
    return InputError(f"{p}: is a directory, expected an instance JSON file")
  kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
  return InputError(f"{p}: is {kind}, expected a regular file (an instance JSON file)")


def read_bounded(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
  """The contents of a regular file of at most ``max_bytes`` bytes.

  A pipe, device or socket is refused before it is read (``stat``, then ``fstat`` on the opened
  descriptor, which is opened non-blocking so that a named pipe without a writer cannot hang);
  a file larger than the limit is refused from its size, and a file that grows while it is read
  is refused after ``max_bytes + 1`` bytes.

  Raises:
    InputError: no such file, not a regular file, unreadable, or over the limit.
  """
  p = Path(path)
  try:
    mode = os.stat(p).st_mode
  except FileNotFoundError:
    raise InputError(f"{p}: no such file") from None
  except OSError as e:
    raise InputError(f"{p}: cannot read ({e.strerror or e.__class__.__name__})") from None
  if not stat.S_ISREG(mode):
    raise _not_regular(p, mode)
  try:
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
  except OSError as e:
    raise InputError(f"{p}: cannot read ({e.strerror or e.__class__.__name__})") from None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise _not_regular(p, st.st_mode)
    if st.st_size > max_bytes:
      raise _too_big(p, f"{st.st_size} bytes, more than", max_bytes)
    chunks, total = [], 0
    while total <= max_bytes:
      chunk = os.read(fd, min(1 << 24, max_bytes + 1 - total))
      if not chunk:
        break
      chunks.append(chunk)
      total += len(chunk)
    if total > max_bytes:
      raise _too_big(p, "it grew while being read to more than", max_bytes)
    return b"".join(chunks)
  except OSError as e:
    raise InputError(f"{p}: cannot read ({e.strerror or e.__class__.__name__})") from None
  finally:
    os.close(fd)


def _too_big(p: Path, what: str, limit: int) -> InputError:
  return InputError(f"{p}: {what} the limit of {limit} bytes (raise it with --max-bytes N)")


# --- strict JSON ---------------------------------------------------------------------------------


class _Unrepresentable(str):
  """A numeric literal beyond float64's range (kept as its text for the error message)."""


class _DuplicateKey(Exception):
  pass


def _number(text: str):
  """parse_int / parse_float hook: a float64, or the literal itself when it overflows."""
  value = float(text)
  return value if math.isfinite(value) else _Unrepresentable(text)


def _object(pairs: list) -> dict:
  """object_pairs_hook: a dict, refusing a key given twice."""
  obj = dict(pairs)
  if len(obj) != len(pairs):
    seen = set()
    for key, _ in pairs:
      if key in seen:
        raise _DuplicateKey(key)
      seen.add(key)
  return obj


def json_nesting_depth(raw: bytes) -> int:
  """The deepest nesting of arrays and objects in JSON text (brackets inside strings ignored).

  A linear scan in chunks with NumPy, so a hostile file (say 10^8 opening brackets) is measured
  before the recursive parser sees it. A quote preceded by an odd run of backslashes is escaped.

  Args:
    raw: UTF-8 JSON text (multi-byte characters never contain ASCII bytes).

  Returns:
    The maximum depth (0 for a scalar document).
  """
  b = np.frombuffer(raw, np.uint8)
  depth = best = 0
  in_string = False
  slashes = 0  # length of the backslash run that ends the previous chunk
  for lo in range(0, b.size, _SCAN_CHUNK):
    m = b[lo:lo + _SCAN_CHUNK]
    n = m.size
    quotes = np.flatnonzero(m == 0x22)
    if quotes.size:
      # index of the last non-backslash byte at or before each position (-1: none in the chunk)
      last = np.where(m != 0x5C, np.arange(n, dtype=np.int32), np.int32(-1))
      np.maximum.accumulate(last, out=last)
      before = np.where(quotes > 0, last[np.maximum(quotes - 1, 0)], -1)
      run = quotes - 1 - before
      run = np.where(before < 0, quotes + slashes, run)
      quotes = quotes[run % 2 == 0]
    brackets = np.flatnonzero((m == 0x5B) | (m == 0x7B) | (m == 0x5D) | (m == 0x7D))
    if brackets.size:
      toggles = np.searchsorted(quotes, brackets)  # unescaped quotes before each bracket
      outside = (toggles + in_string) % 2 == 0
      kinds = m[brackets[outside]]
      steps = np.where((kinds == 0x5B) | (kinds == 0x7B), 1, -1).astype(np.int64)
      if steps.size:
        levels = depth + np.cumsum(steps)
        best = max(best, int(levels.max()))
        depth = int(levels[-1])
    in_string = bool((quotes.size + in_string) % 2)
    plain = m[::-1] != 0x5C
    tail = int(np.argmax(plain)) if plain.any() else n  # backslashes ending this chunk
    slashes = tail + (slashes if tail == n else 0)
  return best


_OUTER_LEVELS = 2  # the object and its arrays of rows are walked here; each row in one C call
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, pos: int) -> int:
  return _WHITESPACE.match(text, pos).end()


def _decode(text: str, pos: int, decoder: json.JSONDecoder, levels: int) -> tuple[Any, int]:
  """The JSON value at ``pos`` (no leading whitespace) and the position after it.

  The outer ``levels`` of arrays and objects are walked in Python and everything below them is
  decoded by the C decoder one element at a time, so no single call holds the interpreter for
  long: Ctrl-C is answered within one row even while a 256 MB file is parsed.
  """
  opener = text[pos:pos + 1]
  if levels == 0 or opener not in ("[", "{"):
    return decoder.raw_decode(text, pos)
  items: list = []
  pos = _skip(text, pos + 1)
  closer = "]" if opener == "[" else "}"
  if text[pos:pos + 1] == closer:
    return (items if opener == "[" else _object(items)), pos + 1
  while True:
    if opener == "[":
      item, pos = _decode(text, pos, decoder, levels - 1)
      items.append(item)
    else:
      if text[pos:pos + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
      key, pos = json.decoder.scanstring(text, pos + 1)
      pos = _skip(text, pos)
      if text[pos:pos + 1] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
      item, pos = _decode(text, _skip(text, pos + 1), decoder, levels - 1)
      items.append((key, item))
    pos = _skip(text, pos)
    c = text[pos:pos + 1]
    if c == closer:
      return (items if opener == "[" else _object(items)), pos + 1
    if c != ",":
      raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    pos = _skip(text, pos + 1)


def parse_json_strict(raw: bytes, name: str) -> Any:
  """Parses JSON text strictly: UTF-8, nesting limit, no duplicate keys, float64 numbers.

  Numbers become Python floats; a literal beyond float64's range stays a marked string that the
  field checks of :func:`instance_from_dict` refuse by name.

  Raises:
    InputError: ``name: ...`` one line.
  """
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"{name}: not UTF-8 text (byte {e.start}), expected JSON") from None
  depth = json_nesting_depth(raw)
  if depth > MAX_NESTING:
    raise InputError(f"{name}: JSON nested {depth} levels deep, more than the limit of "
                     f"{MAX_NESTING}")
  decoder = json.JSONDecoder(object_pairs_hook=_object, parse_float=_number, parse_int=_number)
  try:
    value, end = _decode(text, _skip(text, 0), decoder, _OUTER_LEVELS)
    end = _skip(text, end)
    if end != len(text):
      raise json.JSONDecodeError("Extra data", text, end)
    return value
  except json.JSONDecodeError as e:
    raise InputError(f"{name}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  except _DuplicateKey as e:
    raise InputError(f"{name}: key {e.args[0]!r} appears twice in one object, expected each "
                     "key once") from None
  except RecursionError:  # not reachable below MAX_NESTING; kept as a last line of defence
    raise InputError(f"{name}: JSON nested too deeply") from None


# --- fields ------------------------------------------------------------------------------------


_NUMBER = {float, int}  # exact types: bool (a subclass of int) is refused; JSON gives floats only


def _kind(v: Any) -> str:
  if isinstance(v, _Unrepresentable):
    return f"{_short(v)}, beyond the range of float64"
  for t, name in ((bool, "a boolean"), (str, "a string"), (list, "a list"), (dict, "an object")):
    if isinstance(v, t):
      return name
  return "null" if v is None else type(v).__name__


def _short(text: str) -> str:
  return text if len(text) <= 24 else f"{text[:12]}…{text[-6:]} ({len(text)} characters)"


def _not_a_number(where: str, v: Any) -> InputError:
  return InputError(f"{where} is {_kind(v)}, expected a finite number")


def _vector(obj: dict, key: str) -> np.ndarray:
  v = obj[key]
  if type(v) is not list or not v:
    raise InputError(f"{key} must be a non-empty list of numbers, got {_kind(v)}"
                     + (" (empty)" if v == [] else ""))
  if not set(map(type, v)) <= _NUMBER:
    i = next(i for i, x in enumerate(v) if type(x) not in _NUMBER)
    raise _not_a_number(f"{key} entry {i}", v[i])
  return _float64(v, key)


def _matrix(obj: dict, key: str) -> np.ndarray:
  rows = obj[key]
  if type(rows) is not list or not rows:
    raise InputError(f"{key} must be a non-empty list of rows of numbers, got {_kind(rows)}"
                     + (" (empty)" if rows == [] else ""))
  width = None
  for i, row in enumerate(rows):
    if type(row) is not list:
      raise InputError(f"{key} row {i} is {_kind(row)}, expected a list of numbers")
    if width is None:
      width = len(row)
    elif len(row) != width:
      raise InputError(f"{key} must be a list of rows of equal length: row {i} has {len(row)} "
                       f"entries, row 0 has {width}")
    if not set(map(type, row)) <= _NUMBER:
      j = next(j for j, x in enumerate(row) if type(x) not in _NUMBER)
      raise _not_a_number(f"{key} row {i} entry {j}", row[j])
  return _float64(rows, key).reshape(len(rows), width)


def _float64(values: list, key: str) -> np.ndarray:
  try:
    return np.array(values, dtype=np.float64)
  except OverflowError:  # a Python int beyond float64 (JSON numbers never get here)
    raise InputError(f"{key} has an integer beyond the range of float64") from None


def instance_from_dict(obj: Any) -> tuple[Instance, dict]:
  """Validates a parsed instance object (as :func:`parse_json_strict` returns it).

  Numbers must be floats or ints (the JSON hooks give floats); strings, booleans, null and nested
  lists are refused where a number is expected.

  Returns:
    (instance, labels) with labels = {"prompts": [...] or None, "responses": [...] or None}.

  Raises:
    InputError / InstanceError: one-line message naming the field and the rule.
  """
  if not isinstance(obj, dict):
    raise InputError(f"instance must be a JSON object, got {_kind(obj)}")
  for key in ("beta", "prompt_weights", "data", "reward"):
    if key not in obj:
      raise InputError(f"{key} is missing, expected it in the instance object")
  unknown = sorted(set(obj) - _ALLOWED)
  if unknown:
    raise InputError(f"{unknown[0]} is not a known field (known: {', '.join(sorted(_ALLOWED))})")
  beta = obj["beta"]
  if type(beta) not in _NUMBER:
    raise _not_a_number("beta", beta)
  w = _vector(obj, "prompt_weights")
  d = _matrix(obj, "data")
  r = _matrix(obj, "reward")
  ref = _matrix(obj, "reference") if obj.get("reference") is not None else None
  labels = {}
  for key, n in (("prompts", w.shape[0]), ("responses", d.shape[1])):
    v = obj.get(key)
    if v is not None:
      if type(v) is not list or not all(type(s) is str for s in v):
        raise InputError(f"{key} must be a list of strings")
      if len(v) != n:
        raise InputError(f"{key} has {len(v)} labels, expected {n}")
    labels[key] = v
  inst = make_instance(w, d, r, _float64(beta, "beta"), reference=ref, dtype=np.float64)
  validate(inst)
  return inst, labels


def parse_instance(raw: bytes, name: str) -> tuple[Instance, dict]:
  """Parses and validates instance JSON text; errors are prefixed with ``name``."""
  obj = parse_json_strict(raw, name)
  try:
    return instance_from_dict(obj)
  except (InputError, InstanceError) as e:
    raise type(e)(f"{name}: {e}") from None


def read_instance(path: str | os.PathLike,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Instance, dict]:
  """Reads and validates an instance file (see module docstring).

  Args:
    path: a regular file of at most ``max_bytes`` bytes.
    max_bytes: the size limit.

  Returns:
    (instance, labels) as :func:`instance_from_dict`.
  """
  return parse_instance(read_bounded(path, max_bytes), str(path))


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

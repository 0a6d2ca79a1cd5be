"""CoLA files: the two-column form (sentence, label) and the original four-column form.

- two columns: ``sentence<TAB>label`` (the lower-cased GLUE copy in ../shared/data/cola);
- four columns: ``source<TAB>label<TAB>original mark<TAB>sentence`` (the original CoLA release;
  the mark is ``*`` or empty).

Label 1 = acceptable, 0 = unacceptable. A file has one form throughout; blank lines at the end are
ignored. Any malformed row raises :class:`verify.io.InputError` naming the file and line.

References: Warstadt, Singh and Bowman (2019), "Neural Network Acceptability Judgments".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import InputError

__all__ = ["Example", "parse_cola", "read_cola"]


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled sentence: ``label`` 1 = acceptable, 0 = unacceptable."""

  sentence: str
  label: int


def parse_cola(text: str, name: str = "<text>") -> list[Example]:
  """Parses CoLA text in either form.

  Args:
    text: the file's contents.
    name: the file name used in error messages.

  Returns:
    The examples in file order.

  Raises:
    InputError: ``name: line N: ...`` for the first malformed row (or an empty file).
  """
  lines = text.splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    raise InputError(f"{name}: no examples (empty file)")
  out: list[Example] = []
  form = None
  for n, line in enumerate(lines, start=1):
    fields = line.split("\t")
    if len(fields) not in (2, 4):
      raise InputError(f"{name}: line {n}: {len(fields)} tab-separated fields, expected 2 "
                       "(sentence, label) or 4 (source, label, mark, sentence)")
    if form is None:
      form = len(fields)
    elif len(fields) != form:
      raise InputError(f"{name}: line {n}: {len(fields)} fields, but line 1 has {form}; a file "
                       "has one form throughout")
    sentence, label = (fields[0], fields[1]) if form == 2 else (fields[3], fields[1])
    label = label.strip()
    if label not in ("0", "1"):
      raise InputError(f"{name}: line {n}: label is {label!r}, expected 0 or 1")
    if not sentence.strip():
      raise InputError(f"{name}: line {n}: the sentence is empty")
    out.append(Example(sentence.strip(), int(label)))
  return out


def read_cola(path: str | Path, limit: int | None = None) -> list[Example]:
  """Reads a CoLA TSV file (either form); the first ``limit`` examples if given."""
  p = Path(path)
  if not p.is_file():
    raise InputError(f"{p}: no such file")
  try:
    text = p.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"{p}: cannot read ({e.__class__.__name__})") from None
  examples = parse_cola(text, str(p))
  if limit is not None:
    if limit < 1:
      raise InputError(f"--limit is {limit}, expected a positive integer")
    examples = examples[:limit]
  return examples

"""Writing results: strict JSON values, atomic files, staged output sets, the `verify` report.

- :func:`to_jsonable` refuses a non-finite number (:class:`OutputError` naming where it is: a
  caller that genuinely has no value passes None) and writes −0.0 as 0.0.
- Files are written whole or not at all (a temporary file beside the target, renamed into place)
  with the permissions a normal file gets (0666 less the umask).
- :class:`StagedOutput` collects a set of files in a staging folder inside the destination and
  moves them into place together at the end; a folder it replaces (``verify``'s counterexamples)
  is replaced as a whole, so no stale file of an earlier run is left beside a new report.
- Every temporary file and staging folder is registered in :mod:`.pending` while it exists, and
  moves into place happen under its commit lock: on Ctrl-C the command line lets a move in
  progress finish, then deletes the temporaries.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError, OutputError
from .pending import committing, created, done, kept, pending

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_write_bytes", "to_jsonable",
           "json_text", "format_number", "counterexample_file", "report_markdown", "StagedOutput",
           "check_output_dir",
           "check_output_file", "file_mode", "scratch_dir"]

def _read_umask() -> int:
  try:
    for line in Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # no /proc: read it by setting it (once, then put back)
  os.umask(mask)
  return mask


_UMASK: list[int] = []


def file_mode() -> int:
  """The mode a newly created file gets: 0o666 less the process umask."""
  if not _UMASK:
    _UMASK.append(_read_umask())
  return 0o666 & ~_UMASK[0]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes a file whole or not at all (temporary file + rename), mode 0666 less the umask."""
  p = Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  fd, name = pending(lambda: tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp"),
                     lambda made: made[1])
  tmp = Path(name)
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), file_mode())
      f.write(data)
    with committing():
      os.replace(tmp, p)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  finally:
    done(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes a UTF-8 text file whole or not at all."""
  atomic_write_bytes(path, text.encode("utf-8"))


class _NonFinite(Exception):
  def __init__(self, value):
    super().__init__(value)
    self.value, self.path = value, []


def _convert(x: Any) -> Any:
  if isinstance(x, dict):
    out = {}
    for k, v in x.items():
      try:
        out[str(k)] = _convert(v)
      except _NonFinite as e:
        e.path.append(f".{k}")
        raise
    return out
  if isinstance(x, (list, tuple)):
    items = []
    for i, v in enumerate(x):
      try:
        items.append(_convert(v))
      except _NonFinite as e:
        e.path.append(f"[{i}]")
        raise
    return items
  if isinstance(x, bool) or x is None or isinstance(x, str):
    return x
  if isinstance(x, int):
    return int(x)
  if isinstance(x, float):
    if not math.isfinite(x):
      raise _NonFinite(x)
    return float(x) + 0.0  # a plain float; -0.0 + 0.0 == +0.0
  if hasattr(x, "tolist"):  # numpy and JAX arrays and scalars: checked whole, in one pass
    a = np.asarray(x)
    if a.dtype.kind == "f":
      bad = ~np.isfinite(a)
      if bad.any():
        at = np.unravel_index(int(np.argmax(bad)), a.shape) if a.ndim else ()
        e = _NonFinite(float(a[at]))
        e.path.extend(f"[{i}]" for i in reversed(at))
        raise e
      a = a + 0.0
    return _convert(a.tolist()) if a.dtype.kind not in "fiub" else a.tolist()
  raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def to_jsonable(x: Any, where: str = "value") -> Any:
  """Converts arrays and numpy scalars to JSON values, strictly.

  Args:
    x: nested dicts, lists, tuples, arrays and scalars.
    where: the name of ``x`` in error messages (keys and indices are appended).

  Returns:
    The same structure of dicts, lists, str, int, float, bool and None; −0.0 becomes 0.0.

  Raises:
    OutputError: a NaN or infinity, naming its place (pass None where there is no value).
    TypeError: an object that has no JSON form.
  """
  try:
    return _convert(x)
  except _NonFinite as e:
    place = where + "".join(reversed(e.path))
    raise OutputError(f"{place} is {e.value}, expected a finite number (a result with no value "
                      "is reported as null only where the code says so)") from None


def json_text(obj: Any, where: str = "value", indent: int | None = 2) -> str:
  """One JSON document (strict: see :func:`to_jsonable`), newline-terminated."""
  return json.dumps(to_jsonable(obj, where), indent=indent, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as a JSON file, whole or not at all (strict: see :func:`to_jsonable`)."""
  atomic_write_text(path, json_text(obj, Path(path).name))


# --- output locations --------------------------------------------------------------------------


def _probe(directory: Path, flag: str) -> list[Path]:
  """Creates ``directory`` (and missing parents) and writes and removes a probe file in it.

  Returns:
    The folders it created, deepest first.
  """
  created = []
  d = directory
  while not d.exists() and d != d.parent:
    created.append(d)
    d = d.parent
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".nondecoupling-probe-")
    os.close(fd)
    os.unlink(name)
  except OSError as e:
    _remove_empty(created)
    what = e.strerror or e.__class__.__name__
    raise InputError(f"{flag} {directory}: cannot write there ({what.lower()})") from None
  return created


def _remove_empty(folders: list[Path]) -> None:
  for d in folders:
    with contextlib.suppress(OSError):
      d.rmdir()


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
  """Checks that files can be written into folder ``path`` before any work starts.

  The folder is created and a probe file written and removed; folders created for the probe are
  removed again, so a run that then fails leaves nothing behind.

  Raises:
    InputError: ``path`` is not a folder, or cannot be created or written into.
  """
  p = Path(path)
  if p.exists() and not p.is_dir():
    raise InputError(f"{flag} {p}: exists and is not a directory")
  _remove_empty(_probe(p, flag))


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> None:
  """Checks that file ``path`` can be written (its folder: as :func:`check_output_dir`)."""
  p = Path(path)
  if p.is_dir():
    raise InputError(f"{flag} {p}: is a directory, expected a file path")
  if p.exists() and not os.access(p, os.W_OK):
    raise InputError(f"{flag} {p}: cannot write there (permission denied)")
  _remove_empty(_probe(p.parent, flag))


@contextlib.contextmanager
def scratch_dir(prefix: str = "nondecoupling-") -> Iterator[Path]:
  """A temporary folder, removed on exit and, if the run is interrupted, by the command line."""
  d = Path(pending(lambda: tempfile.mkdtemp(prefix=prefix), lambda made: made))
  try:
    yield d
  finally:
    shutil.rmtree(d, ignore_errors=True)
    done(d)


class StagedOutput:
  """A set of output files written into a staging folder and moved into place together.

  The staging folder is ``directory/.staging-*`` (same file system, so every move is a rename).
  :meth:`commit` moves each staged file into ``directory`` and each staged folder named in
  ``replace`` over the old one as a whole (an old folder with that name is removed even when
  nothing was staged for it), holding the commit lock so that an interrupt never sees half a set.
  Leaving the ``with`` block without a commit removes the staging folder, and the folders created
  for it if they are empty.

  Args:
    directory: the destination folder (created with its parents when missing).
    replace: names of sub-folders that are replaced as a whole.
  """

  def __init__(self, directory: str | os.PathLike, replace: tuple[str, ...] = ()):
    self.directory = Path(directory)
    self.replace = tuple(replace)
    self._created: list[Path] = []
    self.staging: Path | None = None
    self.written: list[Path] = []
    self._committed = False

  def __enter__(self) -> StagedOutput:
    self._created = _probe(self.directory, "--out")
    created(self._created)
    self.staging = Path(pending(lambda: tempfile.mkdtemp(dir=self.directory, prefix=".staging-"),
                                lambda made: made))
    for name in self.replace:
      (self.staging / name).mkdir()
    return self

  def __exit__(self, *exc) -> None:
    if self.staging is not None:
      shutil.rmtree(self.staging, ignore_errors=True)
      done(self.staging)
      self.staging = None
      if not self._committed:
        _remove_empty(self._created)
      kept(self._created)

  def path(self, relative: str | os.PathLike) -> Path:
    """Where to write ``relative`` (a file name, or ``folder/file`` for a replaced folder)."""
    assert self.staging is not None, "use inside `with StagedOutput(...)`"
    return self.staging / relative

  def write_json(self, relative: str | os.PathLike, obj: Any) -> None:
    atomic_write_json(self.path(relative), obj)

  def write_text(self, relative: str | os.PathLike, text: str) -> None:
    atomic_write_text(self.path(relative), text)

  def commit(self) -> list[Path]:
    """Moves everything staged into place; returns the destination files."""
    assert self.staging is not None, "use inside `with StagedOutput(...)`"
    with committing():
      for name in self.replace:
        target, staged = self.directory / name, self.staging / name
        if target.exists() or target.is_symlink():
          os.replace(target, self.staging / f".old-{name}")  # removed with the staging folder
        if any(staged.iterdir()):
          self.written += sorted(self.directory / name / f.name for f in staged.iterdir())
          os.replace(staged, target)
      for f in sorted(self.staging.iterdir()):
        if f.is_file():
          os.replace(f, self.directory / f.name)
          self.written.append(self.directory / f.name)
      self._committed = True
    return self.written


# --- the verify report -------------------------------------------------------------------------


def format_number(x, spec=".3g"):
  """A report cell: the number, or a dash when there is none."""
  return "—" if x is None else format(x, spec)


def counterexample_file(counterexample: dict) -> dict:
  """The file of a counterexample that ``check`` re-checks: its instance, or its tree file."""
  return counterexample["instance"] if "instance" in counterexample else counterexample["tree"]


def report_markdown(report: dict) -> str:
  """The Markdown report (same content as the JSON, as a table plus counterexamples)."""
  prov = report.get("provenance") or {}
  lines = [
      "# nondecoupling verify", "",
      f"Seed {report['seed']}, {report['instances_per_statement']} random instances per "
      f"statement (families: {', '.join(report['families'])}), Hypothesis search of "
      f"{report['search_examples']} examples per statement, {report['devices']} device(s), "
      f"{report['seconds']:.1f} s.", "",
  ]
  if prov:
    lines += [f"nondecoupling {prov.get('version', 'unknown')}, commit "
              f"`{prov.get('commit', 'unknown')}`.", ""]
  lines += [
      "Source `paper` = arXiv 2601.07389 v1 as printed; `ours` = this project's statements "
      "(not the paper's).", "",
      "| statement | source | expected | outcome | instances | worst margin | tightness |",
      "|---|---|---|---|---|---|---|",
  ]
  for s in report["statements"]:
    outcome = ("holds" if s["holds"] else "refuted") + ("" if s["as_expected"] else " (UNEXPECTED)")
    lines.append(f"| {s['name']}: {s['title']} | {s['source']} | {s['expected']} | {outcome} | "
                 f"{s['instances']} | {format_number(s['worst_margin'])} | "
                 f"{format_number(s['tightness'])} |")
  cx = [s for s in report["statements"] if s["counterexample"]]
  if cx:
    lines += ["", "## Counterexamples", ""]
    for s in cx:
      c = s["counterexample"]
      lines += [f"### {s['name']} (found by {s['counterexample_source']})", "",
                f"lhs = {c['lhs']:.6g}, rhs = {c['rhs']:.6g}, margin = {c['margin']:.3g}. "
                "Re-check with `nondecoupling check FILE`:", "", "```json",
                json.dumps(to_jsonable(counterexample_file(c), f"{s['name']} counterexample"), indent=1),
                "```", ""]
  lines += ["", f"All outcomes as expected: **{report['all_as_expected']}**", ""]
  return "\n".join(lines)

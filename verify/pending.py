"""Outputs in progress: temporary files and staging folders, removed if the run is interrupted.

Writers register a temporary path while it exists (:func:`pending`) and move finished outputs into
place inside :func:`committing`. On Ctrl-C the command line waits for a move in progress to end,
then calls :func:`remove_pending`, so an interrupted run leaves neither a half-written file nor a
half-moved set of files. Standard library only: the command line imports it at start-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

__all__ = ["pending", "done", "created", "kept", "committing", "remove_pending",
           "pending_paths"]

T = TypeVar("T")

_PENDING: set[Path] = set()
_CREATED: set[Path] = set()
_LOCK = threading.Lock()
_COMMIT = threading.RLock()


def pending(create: Callable[[], T], path_of: Callable[[T], str | os.PathLike]) -> T:
  """Creates a temporary file or folder and registers it, atomically with respect to an interrupt.

  Args:
    create: makes the temporary (e.g. ``lambda: tempfile.mkstemp(dir=d)``).
    path_of: its path, from what ``create`` returned.

  Returns:
    What ``create`` returned.
  """
  with _LOCK:
    made = create()
    _PENDING.add(Path(path_of(made)))
  return made


def done(path: str | os.PathLike) -> None:
  """Unregisters a temporary (it was moved into place or removed)."""
  with _LOCK:
    _PENDING.discard(Path(path))


def created(folders: list[Path]) -> None:
  """Registers folders made for outputs: removed after an interrupt if they are empty then."""
  with _LOCK:
    _CREATED.update(Path(f) for f in folders)


def kept(folders: list[Path]) -> None:
  """Unregisters folders of :func:`created` (their outputs are in place, or they are gone)."""
  with _LOCK:
    _CREATED.difference_update(Path(f) for f in folders)


@contextlib.contextmanager
def committing(timeout: float = -1) -> Iterator[bool]:
  """Holds the commit lock: outputs are moved into place inside it, never half a set.

  Args:
    timeout: seconds to wait for it (-1: as long as it takes).

  Yields:
    Whether the lock is held.
  """
  got = _COMMIT.acquire(timeout=timeout)
  try:
    yield got
  finally:
    if got:
      _COMMIT.release()


def pending_paths() -> list[Path]:
  """The registered temporaries (deepest first)."""
  with _LOCK:
    return sorted(_PENDING, key=lambda p: len(p.parts), reverse=True)


def remove_pending() -> None:
  """Deletes every registered temporary file and folder, then the registered output folders
  that are left empty (after an interrupt)."""
  with _LOCK:
    paths = sorted(_PENDING, key=lambda p: len(p.parts), reverse=True)
    folders = sorted(_CREATED, key=lambda p: len(p.parts), reverse=True)
    _PENDING.clear()
    _CREATED.clear()
  for p in paths:
    if p.is_dir() and not p.is_symlink():
      shutil.rmtree(p, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        p.unlink()
  for d in folders:
    with contextlib.suppress(OSError):
      d.rmdir()

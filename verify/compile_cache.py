"""JAX's persistent compilation cache: compiled programs kept on disk between processes.

A command that compiles the same programs as an earlier one (the same shapes, the same code, the
same JAX) loads them from disk instead of compiling them again. The directory is
``$NONDECOUPLING_CACHE_DIR`` when set, otherwise ``$XDG_CACHE_HOME/nondecoupling/jax`` (or
``~/.cache/nondecoupling/jax``). Every program is cached, however small or quick to compile: the
small kernels of a ``check`` are most of its compile time. XLA's entries go to ``xla/`` in that
directory; whole executables of :func:`.stored_programs.stored_jit` (which also skip tracing)
go to ``programs/``. An unusable directory never fails a
command: the cache is then off, with one warning line on stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import jax

from .stored_programs import set_program_dir

__all__ = ["CACHE_ENV", "default_cache_dir", "enable_compile_cache"]

CACHE_ENV = "NONDECOUPLING_CACHE_DIR"


def default_cache_dir() -> Path:
  """``$NONDECOUPLING_CACHE_DIR``, else ``$XDG_CACHE_HOME/nondecoupling/jax``, else
  ``~/.cache/nondecoupling/jax`` (an empty variable counts as unset)."""
  chosen = os.environ.get(CACHE_ENV)
  if chosen:
    return Path(chosen).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
  return Path(base).expanduser() / "nondecoupling" / "jax"


def _writable(directory: Path) -> str | None:
  """None when ``directory`` exists (made if needed) and takes a file; else why not."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return None


def enable_compile_cache(directory: Path | str | None = None) -> Path | None:
  """Turns on JAX's persistent compilation cache in ``directory`` (default
  :func:`default_cache_dir`) for every program compiled from now on.

  Args:
    directory: where compiled programs are kept; made if missing.

  Returns:
    The directory in use, or None when it cannot be used (one ``warning:`` line on stderr; the
    command then runs without a cache).
  """
  where = Path(directory).expanduser() if directory is not None else default_cache_dir()
  problem = _writable(where)
  if problem is not None:
    print(f"warning: compilation cache off: {where}: {problem}", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", str(where / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  set_program_dir(where / "programs")
  return where

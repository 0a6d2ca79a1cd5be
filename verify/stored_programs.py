"""Compiled programs kept on disk whole, so that a warm command neither traces nor compiles.

JAX's persistent compilation cache (:mod:`.compile_cache`) skips XLA's compilation, but its key is
the lowered program: every process still traces the Python code and lowers it, which for the
statements of ``check`` is most of the time. :func:`stored_jit` keeps the compiled executable
itself (``jax.experimental.serialize_executable``) under a key made of the function's name, the
arguments' tree, shapes and dtypes, the devices, the JAX version and configuration, and a hash of
the source of ``theory/`` and ``verify/`` (any edit of the code makes new keys). A stored program
is used only when every part of its key matches; one that cannot be read is compiled again and
replaced. Programs that cannot be serialised run as a plain ``jax.jit``.

On CPU an executable serialises incompletely when the process has loaded any program from XLA's
persistent cache before compiling it: the next process fails to run it (``NOT_FOUND: Function
broadcast_compare_fusion.1 not found``), compiles again and stores another broken copy, so every
warm run paid a whole compile (4.4 s instead of 1.8 s for ``check``). A process that has had a hit
in XLA's cache (counted through ``jax.monitoring``) therefore runs what it compiles without
storing it; commands that use stored programs compile nothing before them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jaxlib
import numpy as np
from jax.experimental import serialize_executable

from .. import theory

__all__ = ["stored_jit", "set_program_dir", "program_dir", "storing_is_safe", "program_key", "storable",
           "program_name", "keep_file"]

_STATE: dict[str, Path | None] = {"dir": None}
_FORMAT = 1  # bump when the file layout changes
_XLA_CACHE_HITS = [0]  # programs this process loaded from XLA's persistent cache


def _count_xla_cache_hits(event: str, **_) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _XLA_CACHE_HITS[0] += 1


jax.monitoring.register_event_listener(_count_xla_cache_hits)


def storing_is_safe() -> bool:
  """Whether a program compiled now serialises whole: no XLA-cache hit so far in this process."""
  return _XLA_CACHE_HITS[0] == 0


def set_program_dir(directory: Path | None) -> None:
  """Where :func:`stored_jit` keeps programs from now on (None: nowhere, plain jit)."""
  if directory is not None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
  _STATE["dir"] = directory


def program_dir() -> Path | None:
  """The folder of stored programs, or None when they are off."""
  return _STATE["dir"]


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
  """sha256 over the relative path and bytes of every .py file of theory/ and verify/."""
  h = hashlib.sha256()
  for root in (Path(theory.__file__).parent, Path(__file__).parent):
    for path in sorted(root.rglob("*.py")):
      h.update(str(path.relative_to(root.parent)).encode())
      h.update(path.read_bytes())
  return h.hexdigest()


def _environment() -> str:
  devices = jax.devices()
  return repr((_FORMAT, jax.__version__, jaxlib.__version__,
               jax.default_backend(), len(devices), devices[0].device_kind,
               jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion,
               jax.config.jax_numpy_dtype_promotion, os.environ.get("XLA_FLAGS", ""),
               _code_hash()))


def _signature(leaf) -> tuple:
  a = leaf if isinstance(leaf, jax.Array) else np.asarray(leaf)
  weak = bool(getattr(a, "weak_type", False))
  sharding = str(a.sharding) if isinstance(a, jax.Array) else ""
  return (tuple(a.shape), str(a.dtype), weak, sharding)


def program_key(name: str, args: tuple) -> str:
  """The key of program ``name`` on ``args``: a hash of the name, the arguments' tree, shapes,
  dtypes and shardings, and :func:`_environment` (devices, versions, configuration, code)."""
  leaves, tree = jax.tree.flatten(args)
  text = repr((name, str(tree), [_signature(x) for x in leaves], _environment()))
  return hashlib.sha256(text.encode()).hexdigest()[:40]


def _load(path: Path, args: tuple, device):
  """The stored program at ``path`` as a callable on ``args``'s tree (on ``device``), or None."""
  try:
    blob, out_skeleton = pickle.loads(path.read_bytes())
    in_tree = jax.tree.structure((args, {}))
    out_tree = jax.tree.structure(out_skeleton)
    return serialize_executable.deserialize_and_load(blob, in_tree, out_tree,
                                                     execution_devices=[device])
  except Exception:  # noqa: BLE001 - an unreadable or stale file is compiled again
    return None


def keep_file(path: Path, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (a temporary file beside it, then a rename); a
  failure only means the file is not kept (what this folder holds can always be made again)."""
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except OSError:
    if tmp is not None:
      try:
        os.unlink(tmp)
      except OSError:
        pass


def _store(path: Path, compiled) -> None:
  """Writes the compiled program atomically; a failure only means it is not kept."""
  try:
    blob, _, out_tree = serialize_executable.serialize(compiled)
  except Exception:  # noqa: BLE001 - not serialisable: run without storing
    return
  skeleton = jax.tree.unflatten(out_tree, list(range(out_tree.num_leaves)))
  keep_file(path, pickle.dumps((blob, skeleton)))


def _single_device(args: tuple):
  """The one device every array argument is on (the default device for host values), or None.

  Only single-device programs are stored: a loaded program runs on the devices it is given, so
  one compiled for a device must be loaded for that device (by default JAX would load it for
  every local device and then refuse its single-device arguments).
  """
  devices = {d for leaf in jax.tree.leaves(args) if isinstance(leaf, jax.Array)
             for d in leaf.devices()}
  if not devices:
    return jax.devices()[0]
  return devices.pop() if len(devices) == 1 else None


def storable(fn: Callable) -> bool:
  """Only functions defined at module level in this package: their code is in the key's hash (a
  function defined elsewhere, or a closure, could change without changing its name)."""
  module, qualname = getattr(fn, "__module__", "") or "", getattr(fn, "__qualname__", "")
  return module.startswith(f"{theory.__package__.rsplit('.', 1)[0]}.") and "<" not in qualname


def program_name(fn: Callable) -> str | None:
  """The name ``fn``'s programs are stored under: its ``program_name`` attribute (an adapter
  around a function of ours sets it); for ``functools.partial`` of one of ours with keywords only,
  its name with the keywords' reprs; else module and qualified name when :func:`storable`; else
  None (not stored)."""
  named = getattr(fn, "program_name", None)
  if named is not None:
    return named
  if isinstance(fn, functools.partial) and not fn.args and storable(fn.func):
    keywords = ",".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
    return f"{fn.func.__module__}.{fn.func.__qualname__}[{keywords}]"
  return f"{fn.__module__}.{fn.__qualname__}" if storable(fn) else None


@functools.lru_cache(maxsize=None)
def stored_jit(fn: Callable, name: str | None = None) -> Callable:
  """``jax.jit(fn)`` whose compiled programs are kept in :func:`program_dir` between processes.

  Args:
    fn: a function of arrays and pytrees of arrays (positional arguments only), defined at
      module level in theory/ or verify/ (anything else runs as a plain ``jax.jit``).
    name: a name for the key that the caller vouches for (then ``fn`` is stored wherever it is
      defined; the same name must never stand for different code).

  Returns:
    A callable with ``fn``'s results (one per function); the first call on a new key compiles
    and stores, a later process with the same key loads the executable without tracing.
  """
  jitted = jax.jit(fn)
  if name is None and not storable(fn):
    return jitted
  name = name or f"{fn.__module__}.{fn.__qualname__}"
  loaded: dict[str, Any] = {}

  def compile_and_store(path: Path, args: tuple):
    # Compiled afresh, not taken from XLA's cache: an executable that XLA's cache loaded
    # serialises incompletely on CPU (its functions are missing when loaded again), and so does
    # one compiled after any XLA-cache hit in this process (module docstring): not stored then.
    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
      program = jitted.lower(*args).compile()
    finally:
      jax.config.update("jax_enable_compilation_cache", cached)
    if storing_is_safe():
      _store(path, program)
    return program

  def call(*args):
    folder = program_dir()
    device = _single_device(args)
    if folder is None or device is None:
      return jitted(*args)
    key = program_key(name, args)
    if key in loaded:
      return loaded[key](*args)
    path = folder / f"{key}.bin"
    program = _load(path, args, device) if path.exists() else None
    if program is not None:
      try:
        out = jax.block_until_ready(program(*args))
        loaded[key] = program
        return out
      except jax.errors.JaxRuntimeError:  # a damaged program: compiled again below
        pass
    loaded[key] = compile_and_store(path, args)
    return loaded[key](*args)

  return call

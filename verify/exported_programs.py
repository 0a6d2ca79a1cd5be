"""Lowered programs kept on disk (``jax.export``), so that a warm process does not trace them.

JAX's persistent compilation cache (:mod:`.compile_cache`) skips XLA's compilation, but its key is
the lowered program: a process still traces the Python code and lowers it first, and for
``verify``'s batched statements that was most of a warm run (a profile: 80 of 143 s tracing, 39 s
lowering). :mod:`.stored_programs` keeps whole executables, which on CPU cannot be stored after
any XLA-cache hit in the process and only for one device; ``verify`` meets both. So its programs
are kept one step earlier: :func:`exported_jit` stores the lowered module (``jax.export``,
StableHLO, with the arguments' shardings, so programs over several devices are kept too) under
the key of :mod:`.stored_programs` (the name, the arguments' tree, shapes, dtypes and
shardings, the devices, JAX's version and configuration, and a hash of every ``.py`` file of
``theory/`` and ``verify/``). A warm process reads the module and compiles it through XLA's
cache, which now hits without tracing anything. A file that cannot be read is exported again and
replaced; a function that cannot be exported runs as a plain ``jax.jit``.

A program that spends its time running rather than compiling (a flow's thousands of steps in a
``while_loop``) can ask for XLA's full backend optimisation (``optimise=True``: level 3, XLA's
default) whatever ``XLA_FLAGS`` says: the test suite compiles at level 0 to save compile time on
its many small programs, where one step of the k3 tree flow ran 4× slower (406 against 98 µs; a
compile 1.0 against 2.8 s).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any, Callable

import jax

from .stored_programs import keep_file, program_dir, program_key, program_name

__all__ = ["exported_jit", "exported", "exported_partial", "FULL_OPTIMISATION"]

FULL_OPTIMISATION = {"xla_backend_optimization_level": 3}  # XLA's default level


def _read(path: Path) -> tuple[Any, Any] | None:
  """(deserialised Exported, output tree) from ``path``, or None when it cannot be read."""
  try:
    blob, out_tree = pickle.loads(path.read_bytes())
    return jax.export.deserialize(bytearray(blob)), out_tree
  except Exception:  # noqa: BLE001 - an unreadable or stale file is exported again
    return None


@functools.lru_cache(maxsize=None)
def exported_jit(fn: Callable, name: str, optimise: bool = False) -> Callable:
  """``jax.jit(fn)`` whose lowered programs are kept in :func:`~.stored_programs.program_dir`.

  Args:
    fn: a traceable function of positional arrays and pytrees of arrays.
    name: the program's name in the key, vouched for by the caller: one name never stands for
      two functions (the key also holds a hash of the code of ``theory/`` and ``verify/``).
    optimise: compile with :data:`FULL_OPTIMISATION` whatever ``XLA_FLAGS`` asks (for programs
      that run long).

  Returns:
    A callable with ``fn``'s results. The first call on a new key traces, exports and stores
    the program; a later process with the same key reads it and compiles it (through XLA's
    cache) without tracing ``fn``.
  """
  options = FULL_OPTIMISATION if optimise else None
  jitted = jax.jit(fn, compiler_options=options)
  programs: dict[str, Callable] = {}

  def export(path: Path, leaves: list, in_tree) -> Callable | None:
    out_trees = []

    def flat(*xs):
      out = fn(*jax.tree.unflatten(in_tree, xs))
      leaves_out, tree = jax.tree.flatten(out)
      out_trees.append(tree)
      return leaves_out

    try:
      exported = jax.export.export(jax.jit(flat))(*leaves)
      blob = pickle.dumps((bytes(exported.serialize()), out_trees[-1]))
    except Exception:  # noqa: BLE001 - not exportable or not serialisable: a plain jit then
      return None
    keep_file(path, blob)
    return _program(exported, out_trees[-1], options)

  def call(*args):
    folder = program_dir()
    if folder is None:
      return jitted(*args)
    key = program_key(name, args)
    if key not in programs:
      leaves, in_tree = jax.tree.flatten(args)
      path = folder / f"{key}.exported"
      stored = _read(path) if path.exists() else None
      program = (_program(*stored, options) if stored is not None
                 else export(path, leaves, in_tree))
      programs[key] = program if program is not None else jitted
    program = programs[key]
    if program is jitted:
      return jitted(*args)
    return program(*jax.tree.leaves(args))

  return functools.wraps(fn)(call) if hasattr(fn, "__name__") else call


def exported(fn: Callable, optimise: bool = False) -> Callable:
  """Decorator: :func:`exported_jit` of a module-level function of ours under its own name
  (``functools.partial(exported, optimise=True)`` for a program that runs long)."""
  return exported_jit(fn, f"{fn.__module__}.{fn.__qualname__}", optimise)


@functools.lru_cache(maxsize=None)
def exported_partial(fn: Callable, optimise: bool = False, **static: Any) -> Callable:
  """:func:`exported_jit` of ``fn`` with keyword arguments fixed (what ``static_argnames`` does
  for ``jax.jit``), one program name per value (:func:`~.stored_programs.program_name`)."""
  bound = functools.partial(fn, **static)
  name = program_name(bound)
  if name is None:
    raise ValueError(f"exported_partial: {fn!r} is not a module-level function of this package")
  return exported_jit(bound, name, optimise)


def _program(exported, out_tree, options: dict | None = None) -> Callable:
  """The exported module as a jitted callable on flat arguments, with ``fn``'s output tree."""
  run = jax.jit(exported.call, compiler_options=options)
  return lambda *leaves: jax.tree.unflatten(out_tree, run(*leaves))

"""Public functions that run as one compiled program when called eagerly.

An eager call of a function built from many small jnp operations dispatches (and, the first time,
compiles) every operation on its own: the exact field of a tree recipe on a depth-1 tree took
3.3 s that way, 0.56 s as one ``jax.jit`` program. :func:`compiled` keeps the function a plain
Python function (its signature, docstring and module stay what they were, so the docs and the
doctests see it as before) that calls a ``jax.jit`` of it; inside another trace (jit, vmap, grad)
the jitted call is inlined as any nested jit is.

A function whose configuration may leave a count to be read from the concrete tree (the reward
levels a group enumeration needs) names a ``prepare(tree, cfg) -> cfg`` that fills it: called
eagerly, the count is read from the concrete tree first, as the function did itself before it was
compiled; under another trace it is left to the function (which then falls back or asks for it).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax

__all__ = ["compiled"]


def _concrete(tree) -> bool:
  return not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(tree))


def compiled(*static_argnames: str, prepare: Callable | None = None
             ) -> Callable[[Callable], Callable]:
  """Decorator: the function runs through ``jax.jit`` with ``static_argnames`` static (they must
  be hashable: frozen configurations, ints, strings); ``prepare(tree, cfg)``, when given, fills
  the function's ``cfg`` from a concrete ``tree`` first."""

  def wrap(fn: Callable) -> Callable:
    jitted = jax.jit(fn, static_argnames=static_argnames)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
      if prepare is not None:
        bound = signature.bind(*args, **kwargs)
        tree = bound.arguments["tree"]
        if _concrete(tree):
          bound.arguments["cfg"] = prepare(tree, bound.arguments["cfg"])
          args, kwargs = bound.args, bound.kwargs
      return jitted(*args, **kwargs)

    call.jitted = jitted
    return call

  return wrap

"""Running one parsed command: load its module, run it, turn rule violations into one-line errors.

Each command names its handler as ``"module:function"`` of this package; the handler takes the
parsed arguments and returns the exit status.
"""

from __future__ import annotations

import importlib

from ...theory.instance import InstanceError
from ...theory.recipes import ConfigError
from ..compile_cache import enable_compile_cache
from ..errors import InputError

__all__ = ["run_command"]


def run_command(args) -> int:
  """Imports the command's module, runs its handler and returns the exit status.

  Compiled programs are kept on disk and reused (:mod:`..compile_cache`) unless ``--no-cache``.
  """
  if not getattr(args, "no_cache", False):
    enable_compile_cache()
  module, function = args.handler.split(":")
  handler = getattr(importlib.import_module(f"{__package__}.{module}"), function)
  try:
    return int(handler(args) or 0)
  except (InstanceError, ConfigError) as e:
    raise InputError(str(e)) from None

"""The `nondecoupling` command line: thin calls into theory/, verify/ and figures/.

Every command has ``--help``. Bad input prints one line ``error: ...`` on stderr and exits with
status 2 (no traceback, nothing on stdout, nothing written).

Commands are registered by modules: each module in ``COMMAND_MODULES`` has
``add_commands(subparsers)`` that adds its sub-parsers with ``set_defaults(func=...)``; ``func``
takes the parsed namespace and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = (
    "verify.commands",          # verify, check, figures (the exact tabular engine)
    "verify.dynamics_commands",  # frontier, compare, flow (training dynamics)
    "verify.bridge.cli",        # bridge score / extract / experiment / demo
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
  """A command-line usage problem; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
  """argparse that reports usage errors as one line and exit 2 (no usage dump)."""

  def error(self, message):  # noqa: D401 - argparse API
    raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="nondecoupling",
      description="Exact checks of the non-decoupling of SFT and KL-regularised RL "
                  "(arXiv 2601.07389) on tabular instances and real Qwen3 logits.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  sub.required = True
  for name in COMMAND_MODULES:
    importlib.import_module(name).add_commands(sub)
  return parser


def enable_x64() -> None:
  """Theory runs in float64; must happen before any array is created."""
  import jax
  jax.config.update("jax_enable_x64", True)


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  enable_x64()
  from theory.instance import InstanceError
  from verify.io import InputError
  try:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
  except (UsageError, InputError, InstanceError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())

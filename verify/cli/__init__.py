"""The `nondecoupling` command line: thin calls into theory/, verify/ and figures/.

Every command has ``--help``. Bad input prints one line ``error: ...`` on stderr and exits with
status 2 (no traceback, nothing on stdout, nothing written). With no arguments the usage is
printed. The parser (:mod:`.parser`) imports nothing heavy; :mod:`.running`, which loads JAX and
the command's module, is imported only when a command runs, so ``--help`` answers at once.
Nothing imports this package.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from ..errors import InputError
from .parser import UsageError, build_parser

__all__ = ["main", "EXIT_OK", "EXIT_FAIL", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _version() -> str:
  try:
    return version("nondecoupling")
  except PackageNotFoundError:
    return "unknown"


def main(argv: list[str] | None = None) -> int:
  """Runs one command; returns its exit status (0 ok, 1 a check failed, 2 bad input, 130 Ctrl-C)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = build_parser(_version() if "--version" in argv else "")
  try:
    args = parser.parse_args(argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  if args.command is None:
    parser.print_help()
    return EXIT_OK
  try:
    running = importlib.import_module(f"{__name__}.running")
    return running.run_command(args)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
  sys.exit(main())

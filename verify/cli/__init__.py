"""The `nondecoupling` command line: thin calls into theory/, verify/ and figures/.

Every command has ``--help``. Bad input prints one line ``error: ...`` on stderr and exits with
status 2 (no traceback, nothing on stdout, nothing written); so does a job whose estimated memory
or time exceeds its limit (:mod:`..budget`). A result that cannot be reported (a non-finite number
where a number is expected) is one line and exit status 1. With no arguments the usage is
printed. The parser (:mod:`.parser`) imports nothing heavy; :mod:`.running`, which loads JAX and
the command's module, is imported only when a command runs, so ``--help`` answers at once.

Ctrl-C: the command runs in a worker thread while the main thread only waits for it, so the
interrupt is handled at once even while XLA computes: the main thread lets a move of outputs in
progress finish, removes every temporary file and staging folder (:mod:`..pending`), prints
``error: interrupted`` and ends the process with status 130 (SIGTERM: 143) without waiting for
the worker. Nothing imports this package.

The console script (:func:`entry`) ends the process with ``os._exit`` once the command has
returned and its output is flushed: Python's finalisation of JAX and XLA (destroying compiled
executables, clients and threads) took 0.25-0.45 s of every warm command. Not under
``jax.distributed``, whose shutdown must run.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

from ..errors import InputError, OutputError
from ..pending import committing, remove_pending
from ..provenance import package_version, provenance
from .parser import UsageError, build_parser

__all__ = ["main", "entry", "EXIT_OK", "EXIT_FAIL", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
_POLL_S = 0.05  # how often the waiting main thread wakes (signals are handled between waits)
_COMMIT_WAIT_S = 10.0  # longest wait for a move of outputs in progress after an interrupt


def _version() -> str:
  p = provenance()
  return f"{package_version()} (commit {p['commit']}, from {p['commit_source']})"


class _Terminated(BaseException):
  """SIGTERM, raised in the main thread like KeyboardInterrupt."""


def _on_sigterm(signum, frame):
  raise _Terminated()


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
  if threading.current_thread() is not threading.main_thread():
    return _run(args)  # signals reach only the main thread: nothing to wait for here
  return _run_in_worker(args)


def entry() -> None:
  """The `nondecoupling` console script: :func:`main`, then the process ends at once."""
  code = main()
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("NONDECOUPLING_DISTRIBUTED"):
    sys.exit(code)  # jax.distributed's shutdown runs at exit
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be written
      pass
  os._exit(code)


def _run(args) -> int:
  """Runs the parsed command; one-line errors for bad input (2) and unreportable results (1)."""
  try:
    running = importlib.import_module(f"{__name__}.running")
    return running.run_command(args)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  except OutputError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_FAIL


def _run_in_worker(args) -> int:
  outcome: dict = {}

  def work():
    try:
      outcome["code"] = _run(args)
    except BaseException as e:  # re-raised in the main thread (a bug: its traceback is wanted)
      outcome["error"] = e

  worker = threading.Thread(target=work, name="nondecoupling-command", daemon=True)
  handlers = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
              signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm)}
  try:
    worker.start()
    while worker.is_alive():
      worker.join(_POLL_S)
  except KeyboardInterrupt:
    _abandon("interrupted", EXIT_INTERRUPTED)
  except _Terminated:
    _abandon("terminated", EXIT_TERMINATED)
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  if "error" in outcome:
    raise outcome["error"]
  return outcome["code"]


def _abandon(what: str, status: int) -> None:
  """Leaves the worker: removes temporaries, prints one line, ends the process at once."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
  with committing(timeout=_COMMIT_WAIT_S):
    remove_pending()
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    try:
      sys.stderr.write(f"error: {what}\n")
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os._exit(status)


if __name__ == "__main__":
  sys.exit(main())

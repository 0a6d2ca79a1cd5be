"""Runs every benchmark in turn (``make bench``); each prints its ratio against a baseline
measured in the same run and writes bench/out/NAME.json.

``python -m bench [NAME ...]`` runs only the named benchmarks (``check``, ``flows``,
``forward``, ``scoring``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
  here = Path(__file__).parent
  names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
  wanted = [f"bench_{a}" if not a.startswith("bench_") else a for a in argv]
  unknown = [w for w in wanted if w not in names]
  if unknown:
    print(f"error: unknown benchmark {unknown[0]} (known: {', '.join(names)})", file=sys.stderr)
    return 2
  status = 0
  for name in wanted or names:
    print(f"== {name}", flush=True)
    module = importlib.import_module(f"bench.{name}")
    result = module.main([])
    status |= result if isinstance(result, int) else 0
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

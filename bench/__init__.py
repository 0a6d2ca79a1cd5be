"""Benchmarks: one script per benchmark (python -m bench.NAME)."""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def write_result(name: str, result) -> Path:
  """Writes one benchmark's numbers to bench/out/NAME.json (for the README's Performance)."""
  OUT.mkdir(parents=True, exist_ok=True)
  path = OUT / f"{name}.json"
  path.write_text(json.dumps(result, indent=2) + "\n")
  return path


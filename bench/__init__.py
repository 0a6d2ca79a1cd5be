"""Benchmarks: one script per benchmark (python -m bench.NAME)."""

import json
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def write_result(name: str, result) -> Path:
  """Writes one benchmark's numbers to bench/out/NAME.json (for the README's Performance)."""
  OUT.mkdir(parents=True, exist_ok=True)
  path = OUT / f"{name}.json"
  path.write_text(json.dumps(result, indent=2) + "\n")
  return path


WARM_UP_S = 3.0  # seconds each side is called for before its timed calls


def warm_up(fn, seconds: float = WARM_UP_S) -> None:
  """Calls ``fn`` (at least once) until ``seconds`` have passed, so that what is timed next is
  the steady state. Measured on 4 December: a process's first second or so of calls of a
  compiled JAX program ran up to 2× slower than later ones (the tree recipes' fields 288 against
  146 ms, the batched check 86 against 47 ms), which is what made earlier ratios ranges."""
  start = time.perf_counter()
  fn()
  while time.perf_counter() - start < seconds:
    fn()


def steady_times(fn, reps: int, seconds: float = WARM_UP_S) -> np.ndarray:
  """Seconds of each of at least ``reps`` calls of ``fn`` made over at least ``seconds`` after
  :func:`warm_up`. On this host a compiled JAX program also ran in slower phases of a few seconds
  within one process (the PPO-clip field 62 ms in some, 135–180 ms in others, 4 December; NumPy
  varied less), so the benchmarks report the fastest call, as ``timeit`` advises, beside the
  median."""
  warm_up(fn)
  runs = []
  start = time.perf_counter()
  while len(runs) < reps or time.perf_counter() - start < seconds:
    t0 = time.perf_counter()
    fn()
    runs.append(time.perf_counter() - t0)
  return np.asarray(runs)

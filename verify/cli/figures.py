"""`nondecoupling figures`: every figure as PNG and PDF.

The theory figures come from :func:`nondecoupling.figures.all_figures`; the bridge figures are
drawn from one deterministic run of the bridge demo (a small random Qwen3).
"""

from __future__ import annotations

import functools
from pathlib import Path

from rich.progress import track

from ...figures import all_figures, write_figure
from ...figures.bridge import RESULT_FIGURES
from ..bridge.demo import run_demo
from ..errors import InputError
from ..reports import StagedOutput, check_output_dir, scratch_dir
from .console import console

__all__ = ["run_figures", "figure_builders", "demo_result"]


@functools.lru_cache(maxsize=1)
def demo_result() -> dict:
  """The experiment of one deterministic bridge-demo run (random tiny Qwen3; cached)."""
  with scratch_dir("nondecoupling-fig-") as tmp:
    return run_demo(tmp, rl_max_steps=200)["experiment"]


def figure_builders() -> dict:
  """name -> zero-argument callable returning a Figure, for every figure the command writes."""
  builders = dict(all_figures())
  for name, draw in RESULT_FIGURES.items():
    builders[f"bridge_{name}"] = functools.partial(lambda d: d(demo_result()), draw)
  return builders


def run_figures(args) -> int:
  figs = figure_builders()
  names = list(figs)
  if args.only:
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in figs]
    if unknown:
      raise InputError(f"--only: unknown figure {unknown[0]!r} (known: {', '.join(names)})")
    names = wanted
  out = Path(args.out)
  check_output_dir(out)
  # Drawn into a staging folder and moved into place at the end: an interrupted run leaves the
  # old set as it was, never half a new one.
  with StagedOutput(out) as staged:
    for name in track(names, description="figures", console=console(stderr=True)):
      write_figure(figs[name](), staged.path("."), name)
    written = staged.commit()
  console().print(f"wrote {len(written)} files to {out}")
  return 0

"""Saving a figure: PNG (150 dpi) and PDF, each written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["FORMATS", "write_figure"]

FORMATS = ("png", "pdf")


def write_figure(fig: Figure, directory: str | os.PathLike, name: str,
                 close: bool = True) -> list[Path]:
  """Writes ``fig`` as ``directory/name.png`` and ``directory/name.pdf``.

  Each file is written to a temporary file in the same directory and renamed into place, so a
  reader never sees half a file.

  Returns:
    The paths written.
  """
  out = Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  written = []
  try:
    for ext in FORMATS:
      fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=f".{ext}")
      try:
        with os.fdopen(fd, "wb") as f:
          fig.savefig(f, format=ext, dpi=150 if ext == "png" else None, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / f"{name}.{ext}")
      except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
      written.append(out / f"{name}.{ext}")
  finally:
    if close:
      plt.close(fig)
  return written

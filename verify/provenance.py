"""Where a result comes from: the package version and the git commit of the code that made it.

Every JSON report carries :func:`provenance` as a top-level ``"provenance"`` object. The commit is
found, in order:

1. ``git rev-parse HEAD`` in the source tree, when this module is a tracked file of a git checkout
   (an editable install, or running from the repository); ``dirty`` says whether tracked files
   differ from that commit;
2. ``_build_info.json`` beside this module, written when the package was built (``setup.py``'s
   ``build_py`` hook records the commit of the tree it was built from);
3. ``"unknown"``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["provenance", "package_version", "BUILD_INFO"]

BUILD_INFO = Path(__file__).with_name("_build_info.json")
_HERE = Path(__file__).resolve().parent


def package_version() -> str:
  """The installed version of nondecoupling ("unknown" when it is not installed)."""
  try:
    return version("nondecoupling")
  except PackageNotFoundError:
    return "unknown"


def _git(*args: str) -> str | None:
  env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
  try:
    proc = subprocess.run(["git", "-C", str(_HERE), *args], capture_output=True, text=True,
                          timeout=10, env=env, stdin=subprocess.DEVNULL)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout.strip() if proc.returncode == 0 else None


def _from_git() -> dict | None:
  if _git("ls-files", "--error-unmatch", "--", "__init__.py") is None:
    return None  # not a tracked file of a checkout (e.g. site-packages inside a repository)
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return None
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status),
          "commit_source": "git"}


def _from_build_info() -> dict | None:
  try:
    obj = json.loads(BUILD_INFO.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  if not isinstance(obj, dict) or not isinstance(obj.get("commit"), str):
    return None
  dirty = obj.get("dirty")
  return {"commit": obj["commit"], "dirty": dirty if isinstance(dirty, bool) else None,
          "commit_source": "build"}


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
  """{"package", "version", "commit", "dirty", "commit_source"} of the running code.

  ``commit_source`` is "git", "build" or "unknown" (then commit is "unknown", dirty null).
  """
  found = _from_git() or _from_build_info() or {"commit": "unknown", "dirty": None,
                                                 "commit_source": "unknown"}
  return {"package": "nondecoupling", "version": package_version(), **found}

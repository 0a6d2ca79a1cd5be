"""Build hook only (pyproject.toml is the configuration): record the git commit of the build.

``build_py`` writes ``nondecoupling/verify/_build_info.json`` = {"commit", "dirty"} into the
build, so a non-editable install can report the commit it was built from
(``nondecoupling.verify.provenance``). ``sdist`` writes the same file into the source archive,
and a build from that archive (no .git) copies it. Editable installs skip it: they read
``git rev-parse HEAD`` from the checkout at run time.
"""

import json
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
INFO = Path("verify") / "_build_info.json"


def _git(*args):
  try:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=30)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout.strip() if proc.returncode == 0 else None


def _write_info(target: Path) -> bool:
  commit = _git("rev-parse", "HEAD")
  if not commit:
    return False
  status = _git("status", "--porcelain", "--untracked-files=no")
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(json.dumps({"commit": commit, "dirty": bool(status)}) + "\n")
  return True


class BuildPyWithCommit(build_py):
  def run(self):
    super().run()
    if getattr(self, "editable_mode", False):
      return
    target = Path(self.build_lib) / "nondecoupling" / INFO
    if not _write_info(target) and (ROOT / INFO).is_file():
      shutil.copyfile(ROOT / INFO, target)  # building from an sdist


class SdistWithCommit(sdist):
  def make_release_tree(self, base_dir, files):
    super().make_release_tree(base_dir, files)
    _write_info(Path(base_dir) / INFO)


setup(cmdclass={"build_py": BuildPyWithCommit, "sdist": SdistWithCommit})

"""The scripts and instance files in examples/ run as a user would run them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from nondecoupling.verify.io import read_instance

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str, cwd=None) -> str:
  proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                        text=True, timeout=600, cwd=cwd)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


@pytest.mark.parametrize("path", sorted((EXAMPLES / "instances").glob("*.json")),
                         ids=lambda p: p.name)
def test_instance_files_are_valid(path):
  inst, _ = read_instance(path)
  assert json.loads(path.read_text())["beta"] == float(inst.beta)


def test_check_instance_script():
  out = _run("check_instance.py", str(EXAMPLES / "instances" / "theorem_4_1_counterexample.json"))
  assert "C3 theorem_4_1_as_printed" in out and "FAILS" in out  # the printed theorem is false
  assert "C4 theorem_4_1_repaired" in out


def test_draw_frontier_script(tmp_path):
  out = _run("draw_frontier.py", str(tmp_path / "f.png"))
  assert (tmp_path / "f.png").stat().st_size > 0 and "regret" in out


def test_compare_recipes_script():
  out = _run("compare_recipes.py")
  assert all(name in out for name in ("grpo", "hpt", "luffy", "srft", "relift"))


def test_score_with_checkpoint_script(tmp_path):
  out = _run("score_with_checkpoint.py", cwd=tmp_path)
  assert out.count("log p(") == 2


def test_check_tree_script():
  out = _run("check_tree.py", str(EXAMPLES / "tree_exact_match.json"))
  assert all(c in out for c in ("k1_reward", "k2_loss", "k3_loss", "regret", "G2"))
  assert "KL to pi* 0.000e+00" in out.splitlines()[2]  # k1 in the reward ends at the tilt

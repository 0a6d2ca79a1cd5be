"""`compare` and `flow` commands (verify/dynamics_commands.py): smoke and error tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from conftest import assert_close
from test_frontier import DIGITS, Reference

from nondecoupling.verify.cli import main

INSTANCE = {"beta": 0.5, "prompt_weights": [0.4, 0.6],
            "data": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
            "reward": [[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]]}


@pytest.fixture
def instance_file(tmp_path):
  p = tmp_path / "inst.json"
  p.write_text(json.dumps(INSTANCE))
  return p


def reference_regret(inst, row):
  """L(π) − min{L(π′) : J(π′) ≥ J(π)} from a row's SFT loss and reward: the mpmath frontier of
  tests/test_frontier.py (THEORY.md D4 in its primal form, 60 digits), not the code's dual bound."""
  with mp.workdps(DIGITS):
    ref = Reference(inst["prompt_weights"], inst["data"], inst["reward"])
    best = mp.fsum(w * b for w, b in zip(ref.w, ref.best))
    return float(mp.mpf(row["sft_loss"]) - ref.min_loss_at_deficit(best - mp.mpf(row["reward"]))[1])


def test_compare_json_has_every_recipe_and_its_regret(instance_file, capsys):
  assert main(["compare", str(instance_file), "--json", "--recipe-steps", "20"]) == 0
  out = json.loads(capsys.readouterr().out)
  names = [r["name"] for r in out["recipes"]]
  assert names == ["sft_then_rl_exact", "sft_then_rl", "rl_then_sft", "alternating", "joint",
                   "grpo", "dr_grpo", "hpt", "luffy", "srft", "relift"]
  for r in out["recipes"]:
    assert {"sft_loss", "reward", "regularized_reward", "regret"} <= set(r)
    assert r["status"] == "ok", r
    assert_close(r["regret"], reference_regret(INSTANCE, r), err_msg=r["name"])
    assert_close(r["kl_data"], r["sft_loss"] - 0.4 * np.log(2) - 0.6 * (
        -0.2 * np.log(0.2) - 0.3 * np.log(0.3) - 0.5 * np.log(0.5)), err_msg=r["name"])
  assert out["provenance"]["commit"] == _git_head()


def test_compare_uses_the_sampled_field_when_grpo_cannot_be_enumerated(tmp_path, capsys):
  """16 distinct rewards and groups of 8: GRPO's exact expectation is infeasible, so compare
  trains it with the unbiased estimator and says so; every end point's regret is the frontier's."""
  rng = np.random.default_rng(5)
  ny = 16
  inst = {"beta": 0.3, "prompt_weights": [0.5, 0.5],
          "data": rng.dirichlet(np.ones(ny), 2).tolist(),
          "reward": rng.uniform(-1, 1, (2, ny)).tolist()}
  p = tmp_path / "many_levels.json"
  p.write_text(json.dumps(inst))
  assert main(["compare", str(p), "--json", "--recipe-steps", "10"]) == 0
  rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["recipes"]}
  assert rows["grpo"]["status"].startswith("monte_carlo")
  for r in rows.values():
    assert_close(r["regret"], reference_regret(inst, r), err_msg=r["name"])


def test_compare_table(instance_file, capsys):
  assert main(["compare", str(instance_file), "--recipe-steps", "5"]) == 0
  out = capsys.readouterr().out
  assert "sft_then_rl_exact" in out and "relift" in out


def test_flow_json_and_table(instance_file, capsys):
  assert main(["flow", str(instance_file), "--pipeline", "alternating", "--json",
               "--points", "2"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["pipeline"] == "alternating" and out["converged"]
  assert out["provenance"]["commit"] == _git_head()
  times = [p["time"] for p in out["points"]]
  assert times[0] == 0 and np.all(np.diff(times) > 0)
  assert len(times) == 1 + 2 * len(out["schedule"]["duration"])
  assert main(["flow", str(instance_file), "--pipeline", "joint", "--points", "2"]) == 0
  assert "grad_cosine" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["flow", "{f}", "--pipeline", "nope"], "invalid choice"),
    (["flow", "{f}"], "--pipeline"),
    (["flow", "{missing}", "--pipeline", "joint"], "no such file"),
    (["flow", "{f}", "--pipeline", "joint", "--points", "0"], "points"),
    (["compare", "{missing}"], "no such file"),
    (["compare", "{bad}"], "broken JSON"),
    (["compare", "{invalid}"], "beta"),
    (["compare", "{f}", "--recipe-steps", "-3"], "recipe-steps"),
    (["compare", "{f}", "--recipe-lr", "nan"], "recipe-lr"),
    (["compare", "{dup}"], "key 'beta' appears twice in one object"),
    (["flow", "{dup}", "--pipeline", "joint"], "key 'beta' appears twice in one object"),
    (["compare", "{strings}"], "reward row 1 entry 0 is a string, expected a finite number"),
    (["flow", "{strings}", "--pipeline", "joint"], "reward row 1 entry 0 is a string"),
    (["compare", "/dev/zero"], "/dev/zero: is a character device"),
    (["flow", "/dev/zero", "--pipeline", "joint"], "/dev/zero: is a character device"),
    (["compare", "{f}", "--max-bytes", "10"], "more than the limit of 10 bytes (raise it with "
                                              "--max-bytes N)"),
    (["compare", "{f}", "--max-seconds", "1"], "(raise it with --max-seconds S)"),
    (["flow", "{f}", "--pipeline", "joint", "--max-memory", "0.001"],
     "(raise it with --max-memory GB)"),
    (["compare", "{f}", "--max-memory", "0"], "expected a finite number > 0"),
    (["flow", "{f}", "--pipeline", "joint", "--max-bytes", "-1"], "expected a whole number > 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, instance_file, tmp_path, capsys):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  invalid = tmp_path / "invalid.json"
  invalid.write_text(json.dumps({**INSTANCE, "beta": -1.0}))
  dup = tmp_path / "dup.json"
  dup.write_text(json.dumps(INSTANCE)[:-1] + ', "beta": 1.0}')
  strings = tmp_path / "strings.json"
  strings.write_text(json.dumps({**INSTANCE, "reward": [[1.0, 0.0, 0.5], ["1", 1.0, -1.0]]}))
  paths = {"f": instance_file, "missing": tmp_path / "none.json", "bad": bad, "invalid": invalid,
           "dup": dup, "strings": strings}
  argv = [a.format(**paths) for a in argv]
  assert main(argv) == 2
  cap = capsys.readouterr()
  assert cap.out == ""
  lines = cap.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["inst.json", "bad.json", "invalid.json", "dup.json", "strings.json"])


def _git_head() -> str:
  root = Path(__file__).resolve().parent.parent
  return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()


def test_dynamics_figures_smoke():
  import matplotlib.pyplot as plt

  from nondecoupling.figures import dynamics
  assert set(dynamics.FIGURES) == {
      "dynamics_fig3a_sft_loss_along_rl", "dynamics_fig3b_reward_along_sft", "dynamics_pl_decay",
      "dynamics_grad_cosine", "dynamics_c1_zero_held_out"}
  for name, make in dynamics.FIGURES.items():
    fig = make()
    assert fig.axes and all(ax.has_data() for ax in fig.axes), name
    plt.close(fig)

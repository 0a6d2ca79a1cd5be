"""The command line: every validation rule (exit 2, one line), check, verify, figures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nondecoupling.verify.cli import main

GOOD = {"beta": 0.5, "prompt_weights": [0.25, 0.75], "data": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
        "reward": [[1.0, 0.0, -1.0], [0.5, -0.5, 0.2]],
        "reference": [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]}


def _write(tmp_path, obj, name="inst.json"):
  p = tmp_path / name
  p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(p)


def _run(argv, capsys):
  code = main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _with(**changes):
  obj = json.loads(json.dumps(GOOD))
  obj.update(changes)
  return obj


BAD_INPUTS = {
    "beta_zero": (_with(beta=0), "beta"),
    "beta_negative": (_with(beta=-1.0), "beta"),
    "beta_infinite": ('{"beta": Infinity, "prompt_weights": [1], "data": [[1, 0]], '
                      '"reward": [[0, 0]]}', "beta"),
    "beta_not_number": (_with(beta="big"), "beta"),
    "weights_not_positive": (_with(prompt_weights=[0.0, 1.0]), "prompt_weights entry 0"),
    "weights_sum": (_with(prompt_weights=[0.5, 0.7]), "prompt_weights sum to 1.2"),
    "data_negative": (_with(data=[[1.5, -0.5, 0.0], [0.2, 0.3, 0.5]]), "data row 0 entry 1"),
    "data_row_sum": (_with(data=[[0.5, 0.5, 0.2], [0.2, 0.3, 0.5]]), "data row 0 sums to 1.2"),
    "reference_row_sum": (_with(reference=[[0.4, 0.4, 0.2], [0.3, 0.3, 0.3]]),
                          "reference row 1 sums to 0.9"),
    "reference_negative": (_with(reference=[[0.6, 0.6, -0.2], [0.3, 0.3, 0.4]]),
                           "reference row 0 entry 2"),
    "reference_zero_on_support": (_with(reference=[[1.0, 0.0, 0.0], [0.3, 0.3, 0.4]]),
                                  "reference row 0 entry 1 is 0"),
    "reward_rows": (_with(reward=[[1.0, 0.0, -1.0]]), "reward has 1 rows, expected 2"),
    "reward_columns": (_with(reward=[[1.0, 0.0], [0.5, -0.5]]), "reward rows have 2 entries"),
    "data_rows": (_with(data=[[0.5, 0.5, 0.0]]), "data has 1 rows, expected 2"),
    "ragged": (_with(data=[[0.5, 0.5], [0.2, 0.3, 0.5]]), "data must be"),
    "reward_not_finite": ('{"beta": 1, "prompt_weights": [1], "data": [[1, 0]], '
                          '"reward": [[NaN, 0]]}', "reward entry 0 0"),
    "one_response": (_with(prompt_weights=[1.0], data=[[1.0]], reward=[[0.0]], reference=None),
                     "at least 2 responses"),
    "missing_field": ({"beta": 1.0, "prompt_weights": [1.0], "data": [[1.0, 0.0]]},
                      "reward is missing"),
    "unknown_field": (_with(temperature=1.0), "temperature is not a known field"),
    "labels_count": (_with(prompts=["only one"]), "prompts has 1 labels, expected 2"),
    "broken_json": ('{"beta": 1.0, "prompt_weights": [1.0', "broken JSON"),
    "not_an_object": ("[1, 2, 3]", "instance must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_every_validation_rule_exit_2_one_line(case, tmp_path, capsys):
  obj, expected = BAD_INPUTS[case]
  if isinstance(obj, dict):
    obj = {k: v for k, v in obj.items() if v is not None}
  code, out, err = _run(["check", _write(tmp_path, obj), "--json"], capsys)
  assert code == 2
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert expected in lines[0], (expected, lines[0])
  assert "Traceback" not in err


def test_missing_file_and_directory(tmp_path, capsys):
  code, out, err = _run(["check", str(tmp_path / "nope.json")], capsys)
  assert code == 2 and out == "" and "no such file" in err and len(err.splitlines()) == 1
  code, out, err = _run(["check", str(tmp_path)], capsys)
  assert code == 2 and out == "" and "is a directory" in err


def test_usage_errors_are_one_line(capsys):
  code, out, err = _run(["verify", "--instances", "zero"], capsys)
  assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
  code, out, err = _run(["nosuchcommand"], capsys)
  assert code == 2 and out == "" and err.startswith("error: ")


def test_check_json_has_every_documented_quantity(tmp_path, capsys):
  code, out, err = _run(["check", _write(tmp_path, GOOD), "--json"], capsys)
  assert code == 0, err
  obj = json.loads(out)
  for key in ("sft_loss_reference", "sft_loss_rl", "c1", "rl_value", "reward_reference",
              "reward_rl", "hoeffding_bound", "joint_tv", "beta_critical", "statements"):
    assert key in obj
  assert abs(obj["sft_loss_rl"] - obj["sft_loss_reference"] - obj["c1"]) < 1e-12
  assert obj["statements"]["C3 theorem_4_1_as_printed"]["source"] == "paper"
  from nondecoupling.verify.numpy_reference import reference_quantities
  ref = reference_quantities(GOOD["prompt_weights"], np.array(GOOD["data"]),
                             np.array(GOOD["reference"]), np.array(GOOD["reward"]), GOOD["beta"])
  for k, v in ref.items():
    if v is None:
      assert obj[k] is None
    else:
      assert abs(obj[k] - v) <= 1e-10 * max(1, abs(v)), k


def test_check_table_output(tmp_path, capsys):
  code, out, err = _run(["check", _write(tmp_path, GOOD)], capsys)
  assert code == 0 and "c1" in out and "theorem_4_1_as_printed" in out


def test_verify_finds_theorem_4_1_false_and_writes_reports(tmp_path, capsys):
  out_dir = tmp_path / "results"
  code, out, err = _run(["verify", "--instances", "240", "--search-examples", "60",
                         "--only", "C1 theorem_3_1,C3,C4,D1 critical_beta_root",
                         "--out", str(out_dir)], capsys)
  assert code == 0, out + err
  report = json.loads((out_dir / "report.json").read_text())
  md = (out_dir / "report.md").read_text()
  by_name = {s["name"]: s for s in report["statements"]}
  c3 = by_name["C3 theorem_4_1_as_printed"]
  assert c3["expected"] == "refuted" and not c3["holds"] and c3["counterexample"]
  assert c3["source"] == "paper" and by_name["C4 theorem_4_1_repaired"]["source"] == "ours"
  assert by_name["C4 theorem_4_1_repaired"]["holds"]
  for s in report["statements"]:
    assert {"name", "source", "expected", "holds", "instances", "worst_margin"} <= set(s)
  assert "theorem_4_1_as_printed" in md and "Counterexamples" in md
  # The counterexample is an instance file `check` re-checks: the printed theorem fails there.
  cx_file = out_dir / c3["counterexample_file"]
  code, out, err = _run(["check", str(cx_file), "--json"], capsys)
  assert code == 0, err
  margins = json.loads(out)["statements"]["C3 theorem_4_1_as_printed"]
  assert margins["applies"] and margins["holds"] is False


def test_verify_writes_nothing_on_bad_arguments(tmp_path, capsys):
  target = tmp_path / "out"
  code, _, err = _run(["verify", "--only", "Z9", "--out", str(target)], capsys)
  assert code == 2 and not target.exists() and "matches no statement" in err


def test_help_for_every_command():
  from nondecoupling.verify.cli.parser import build_parser
  parser = build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  assert {"verify", "check", "figures"} <= set(sub.choices)
  for name, p in sub.choices.items():
    assert p.format_help().strip(), name


def test_entry_point_runs_as_a_program(tmp_path):
  """The installed `nondecoupling` script: exit 2 and one line on stderr, no traceback."""
  proc = subprocess.run([sys.executable, "-m", "nondecoupling.verify.cli", "check", str(tmp_path / "x.json")],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1

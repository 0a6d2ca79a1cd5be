"""The command line: every validation rule (exit 2, one line), check, verify, figures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close, assert_conditioned

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
  assert_close(obj["sft_loss_rl"] - obj["sft_loss_reference"], obj["c1"])  # B3
  assert obj["statements"]["C3 theorem_4_1_as_printed"]["source"] == "paper"
  from nondecoupling.verify.numpy_reference import reference_quantities
  ref = reference_quantities(GOOD["prompt_weights"], np.array(GOOD["data"]),
                             np.array(GOOD["reference"]), np.array(GOOD["reward"]), GOOD["beta"])
  for k, v in ref.items():
    if v is None:
      assert obj[k] is None
    else:
      assert_close(obj[k], v, err_msg=k)


def _corner(beta: float) -> dict:
  """The README instance at β, its rewards scaled so that max |r|/β is the domain's 1e6 when β is
  small (at β = 1e6 they stay O(1): |r|/β = 1e-6)."""
  scale = min(1.0, 1e6 * beta)
  return _with(beta=beta, reward=[[v * scale for v in row] for row in GOOD["reward"]])


CORNERS = {"beta_max": _corner(1e6), "beta_min": _corner(1e-6),
           "near_tie": {"beta": 1.0, "prompt_weights": [1.0], "data": [[0.5, 0.5]],
                        "reward": [[0.3, 0.30000001]]}}


@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_check_at_the_corners_of_the_domain_matches_mpmath(corner, tmp_path, capsys):
  """β = 1e6, β = 1e-6 with |r|/β = 1e6, and a near tie: every quantity finite and right (mpmath,
  conditioned tolerance), and every true statement holds (the printed Theorem 4.1 may fail:
  it is false)."""
  from mp_reference import Problem
  raw = CORNERS[corner]
  code, out, err = _run(["check", _write(tmp_path, raw), "--json"], capsys)
  assert code == 0, err
  obj = json.loads(out)
  ref = Problem(raw["prompt_weights"], raw["data"], raw.get("reference", raw["data"]),
                raw["reward"], raw["beta"])
  for name, (value, scale) in ref.quantities().items():
    if value is None:
      assert obj[name] is None, name
    else:
      assert_conditioned(obj[name], value, scale, err_msg=name, resolution=ref.resolution())
  for name, m in obj["statements"].items():
    assert all(isinstance(m[k], float) and np.isfinite(m[k]) for k in ("lhs", "rhs", "margin",
                                                                        "slack")), (name, m)
    if m["applies"] and m["expected"] == "holds":
      assert m["holds"], (name, m)


def test_check_refuses_a_non_finite_result_with_a_message(tmp_path, capsys, monkeypatch):
  """A NaN where a number is expected is an error with a message, never a silent null."""
  from nondecoupling.verify.cli import tabular

  def broken(inst, chunk=2048):
    from nondecoupling.theory.quantities import check_quantities
    q = dict(check_quantities(inst, chunk))
    q["c1"] = q["c1"] * float("nan")
    return q

  monkeypatch.setattr(tabular, "check_quantities", broken)
  code, out, err = _run(["check", _write(tmp_path, GOOD), "--json"], capsys)
  assert code == 1 and out == ""
  assert err.startswith("error: ") and "c1 is nan" in err and len(err.strip().splitlines()) == 1


def test_check_table_output(tmp_path, capsys):
  code, out, err = _run(["check", _write(tmp_path, GOOD)], capsys)
  assert code == 0 and "c1" in out and "theorem_4_1_as_printed" in out
  # Text that looks like rich markup is printed as it is, not eaten.
  assert "[max r − E_d r]" in out


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


@pytest.mark.parametrize("seed", range(10))
def test_verify_every_outcome_as_expected_on_every_seed(seed, tmp_path, capsys):
  """Whether `verify` passes must not depend on the seed: small sweeps on seeds 0–9, every
  outcome as expected (C3 refuted by the search, everything else holding, no NaN margin)."""
  out_dir = tmp_path / "results"
  code, out, err = _run(["verify", "--instances", "64", "--search-examples", "10", "--seed",
                         str(seed), "--out", str(out_dir)], capsys)
  report = json.loads((out_dir / "report.json").read_text())
  bad = [(s["name"], s["worst_margin"], s["message"]) for s in report["statements"]
         if not s["as_expected"]]
  assert code == 0 and report["all_as_expected"], bad
  assert all(s["nonfinite"] == 0 for s in report["statements"])


def test_verify_counts_a_nan_margin_as_a_failure_with_a_message(tmp_path, capsys, monkeypatch):
  """A NaN margin on an applicable instance fails the statement, with a message naming it."""
  import dataclasses

  from nondecoupling.verify import checking
  from nondecoupling.verify.registry import FLOW_STATEMENTS

  pl = next(s for s in FLOW_STATEMENTS if s.name == "D5 pl_rl")

  def nan_check(batch, key):
    v = pl.check(batch, key)
    return v._replace(margin=v.margin.at[0].set(float("nan")))

  broken = dataclasses.replace(pl, check=nan_check)
  report = checking.run_verify(16, 0, 0, (broken,))
  s = report["statements"][0]
  assert not s["holds"] and not report["all_as_expected"]
  n_batches = len(report["families"])  # the first instance of every family's batch
  assert s["failures"] >= n_batches and s["nonfinite"] == n_batches and "NaN" in s["message"]
  assert s["worst_margin"] is not None and np.isfinite(s["worst_margin"])


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

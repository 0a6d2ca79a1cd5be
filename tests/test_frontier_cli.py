"""The `frontier` command: JSON and table output, agreement with theory.frontier, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close

from nondecoupling.theory.frontier import frontier_curve
from nondecoupling.verify.cli import main as cli_main
from nondecoupling.verify.cli.args import parse_lambdas
from nondecoupling.verify.errors import InputError
from nondecoupling.verify.io import read_instance

GOOD = {"beta": 0.5, "prompt_weights": [0.25, 0.75], "data": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
        "reward": [[1.0, 0.0, 2.0], [0.5, -0.5, 0.2]],
        "reference": [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]}


@pytest.fixture
def main():
  """The `nondecoupling` entry point."""
  return cli_main


def _write(tmp_path, obj, name="inst.json"):
  p = tmp_path / name
  p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(p)


def _run(main, argv, capsys):
  code = main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def test_json_points_match_theory(tmp_path, capsys, main):
  path = _write(tmp_path, GOOD)
  code, out, err = _run(main, ["frontier", path, "--lambdas", "0,0.5,2,1e3", "--json"], capsys)
  assert code == 0 and err == ""
  points = json.loads(out)["points"]
  assert [p["lambda"] for p in points] == [0.0, 0.5, 2.0, 1000.0]
  assert set(points[0]) == {"lambda", "sft_loss", "reward"}
  inst, _ = read_instance(path)
  sft, rew = frontier_curve(inst, np.array([0.0, 0.5, 2.0, 1000.0]))
  assert_close([p["sft_loss"] for p in points], sft)
  assert_close([p["reward"] for p in points], rew)
  # λ = 0 is the data: L(d) = E_w H(d_x), J(d) = E_w E_d r.
  d = np.array(GOOD["data"])
  w = np.array(GOOD["prompt_weights"])
  h = -np.sum(np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0), axis=1)
  assert_close(points[0]["sft_loss"], float(w @ h))
  assert_close(points[0]["reward"], float(w @ np.sum(d * np.array(GOOD["reward"]), 1)))
  # Large λ moves prompt 0 to the better response outside supp d (reward 2).
  assert points[-1]["reward"] > 0.25 * 1.9


def test_edges_of_the_domain(tmp_path, capsys, main):
  """β = 1e-6 with |r|/β = 1e6, and λ up to 1e300 (λ·r overflows): every point finite and exact.

  One prompt, d = (½, ½), r = (0, 1): π_λ = (½/(t + λ), ½/t) with ½/(t + λ) + ½/t = 1, so
  t = (1 − λ + √(1 + λ²))/2 = λ / (λ − 1 + √(1 + λ²)), J = ½/t, L = ½ log(2(t + λ)) + ½ log(2t).
  """
  inst = {"beta": 1e-6, "prompt_weights": [1.0], "data": [[0.5, 0.5]], "reward": [[0.0, 1.0]]}
  path = _write(tmp_path, inst)
  code, out, err = _run(main, ["frontier", path, "--lambdas", "0,0.5,1,1e150,1e300", "--json"],
                        capsys)
  assert code == 0 and err == ""
  for p in json.loads(out)["points"]:
    lam = p["lambda"]
    t = (1 - lam + np.hypot(1, lam)) / 2 if lam < 1 else lam / (lam - 1 + np.hypot(1, lam))
    log_t_lam = np.log(lam) + np.log1p(t / lam) if lam > 0 else np.log(t)  # log(t + λ)
    assert_close(p["sft_loss"], 0.5 * (np.log(2) + log_t_lam) + 0.5 * np.log(2 * t))
    assert_close(p["reward"], 0.5 / t)


def test_table_output(tmp_path, capsys, main):
  path = _write(tmp_path, GOOD)
  code, out, err = _run(main, ["frontier", path], capsys)
  assert code == 0 and err == ""
  assert "frontier" in out and "this project's D4" in out
  assert "reward J" in out


@pytest.mark.parametrize("lambdas,fragment", [
    ("-1", "expected a number >= 0"),
    ("0,abc", "entry 1 is 'abc'"),
    ("", "--lambdas is empty"),
    ("1,,2", "entry 1"),
    ("nan", "finite"),
    ("inf", "finite"),
])
def test_bad_lambdas(tmp_path, capsys, main, lambdas, fragment):
  path = _write(tmp_path, GOOD)
  code, out, err = _run(main, ["frontier", path, f"--lambdas={lambdas}", "--json"], capsys)
  assert code == 2 and out == ""
  assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err


@pytest.mark.parametrize("content,fragment", [
    (None, "no such file"),
    ("{not json", "broken JSON"),
    (dict(GOOD, beta=-1.0), "beta"),
    (dict(GOOD, data=[[0.5, 0.6, 0.0], [0.2, 0.3, 0.5]]), "data row 0 sums to"),
    ([1, 2], "JSON object"),
    ('{"beta": 0.5, "beta": 0.5}', "key 'beta' appears twice in one object"),
    (json.dumps(GOOD).replace('"beta": 0.5', '"beta": 5' + "0" * 330),
     "beta is 500000000000…000000 (331 characters), beyond the range of float64"),
    (json.dumps(GOOD).replace("[1.0, 0.0, 2.0]", "[1.0, false, 2.0]"),
     "reward row 0 entry 1 is a boolean, expected a finite number"),
    ("[" * 5000 + "]" * 5000, "JSON nested 5000 levels deep, more than the limit of 32"),
])
def test_bad_files(tmp_path, capsys, main, content, fragment):
  path = str(tmp_path / "missing.json") if content is None else _write(tmp_path, content)
  code, out, err = _run(main, ["frontier", path, "--json"], capsys)
  assert code == 2 and out == ""
  assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err


@pytest.mark.parametrize("argv,fragment", [
    (["/dev/zero"], "/dev/zero: is a character device, expected a regular file"),
    (["{f}", "--max-bytes", "5"], "more than the limit of 5 bytes (raise it with --max-bytes N)"),
    (["{f}", "--max-memory", "0.001"], "of memory (estimated), more than the limit of 0.001 GB"),
    (["{f}", "--max-seconds", "0.2"], "frontier on 2 × 3 entries and 6 λ needs about"),
    (["{f}", "--max-seconds", "0.1"], "more than the limit of 0.1 s (raise it with --max-seconds "
                                      "S)"),
])
def test_limits(tmp_path, capsys, main, argv, fragment):
  path = _write(tmp_path, GOOD)
  code, out, err = _run(main, ["frontier", *[a.format(f=path) for a in argv], "--json"], capsys)
  assert code == 2 and out == ""
  assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


def test_parse_lambdas():
  assert parse_lambdas(" 0, 1.5 ,3e2") == [0.0, 1.5, 300.0]
  with pytest.raises(InputError):
    parse_lambdas("1;2")

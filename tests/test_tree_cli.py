"""Tree files on the command line: check, frontier, compare, flow, every bad-input rule, budgets.

References are independent of the engine: the atomic engine through the atomic file (depth-1
trees), and brute-force enumeration of every sequence (tests/tree_reference.py, mpmath).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tree_reference as ref
from conftest import TOL_NUMERICAL, assert_close

from nondecoupling.theory.quantities import QUANTITY_DOCS
from nondecoupling.theory.recipes import InfeasibleExactField
from nondecoupling.theory.tree.recipes import registry
from nondecoupling.theory.tree.recipes.constructs import KL_CONSTRUCT_RECIPES
from nondecoupling.verify.cli import main
from nondecoupling.verify.tree_quantities import TREE_QUANTITY_DOCS

ATOMIC = {"beta": 0.5, "prompt_weights": [0.25, 0.75],
          "data": [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],
          "reward": [[1.0, 0.0, -1.0], [0.5, -0.5, 0.2]],
          "reference": [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]}
SMALL = {"beta": 0.7, "vocab": ["<eos>", "a", "b"], "eos": "<eos>", "max_length": 2,
         "prompt_weights": [1.0],
         "prompts": [{"reference": {"nodes": [
             {"prefix": [], "probs": {"<eos>": 0.2, "a": 0.5, "b": 0.3}},
             {"prefix": ["a"], "probs": {"<eos>": 0.6, "b": 0.4}},
             {"prefix": ["b"], "probs": {"<eos>": 1.0}}]},
             "data": [{"tokens": ["a", "<eos>"], "weight": 1}, {"tokens": ["a", "b"], "weight": 3}],
             "reward": {"table": [{"tokens": ["a", "b"], "value": 1.0},
                                  {"tokens": ["b", "<eos>"], "value": 0.5}], "default": -0.2}}]}


def _depth_one(atomic: dict) -> dict:
  """The atomic instance as a tree file: one token per response (T = 1), the first as EOS."""
  names = [f"y{i}" for i in range(len(atomic["data"][0]))]
  prompts = []
  for d, r, rho in zip(atomic["data"], atomic["reward"], atomic["reference"]):
    prompts.append({
        "reference": {"nodes": [{"prefix": [], "probs": {n: p for n, p in zip(names, rho)
                                                         if p > 0}}]},
        "data": [{"tokens": [n], "weight": w} for n, w in zip(names, d) if w > 0],
        "reward": {"table": [{"tokens": [n], "value": v} for n, v, p in zip(names, r, rho)
                             if p > 0]}})
  return {"beta": atomic["beta"], "vocab": names, "eos": names[0], "max_length": 1,
          "prompt_weights": atomic["prompt_weights"], "prompts": prompts}


def _write(tmp_path, obj, name="tree.json") -> str:
  p = tmp_path / name
  p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(p)


def _run(argv, capsys):
  code = main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _json(argv, capsys):
  code, out, err = _run(argv + ["--json"], capsys)
  assert code == 0, err
  return json.loads(out)


def test_depth_one_tree_checks_like_its_atomic_instance(tmp_path, capsys):
  """`check` on an atomic file and on its depth-1 tree file: the same numbers (atomic engine vs
  level recursions), and every token-level statement holds."""
  atomic = _json(["check", _write(tmp_path, ATOMIC, "atomic.json")], capsys)
  tree = _json(["check", _write(tmp_path, _depth_one(ATOMIC))], capsys)
  shared = sorted(set(QUANTITY_DOCS) & set(TREE_QUANTITY_DOCS))
  assert len(shared) >= 12
  for k in shared:
    assert_close(tree[k], atomic[k], err_msg=k)
  assert tree["instance"]["kind"] == "tree" and tree["instance"]["max_length"] == 1
  assert tree["provenance"].keys() == atomic["provenance"].keys()
  for name, m in tree["statements"].items():
    assert m["holds"] in (True, None), name
  assert tree["statements"]["G4 k2_fixed_point_is_tilt_at_depth_1"]["applies"]
  # at depth 1 the k1 and k2 fixed points coincide (both the Gibbs tilt)
  assert_close(tree["fixed_points"]["k2_loss"]["reward"], atomic["reward_rl"])


def _leaf_table(raw):
  return ref.prompts_of(raw)[0]


def test_frontier_of_a_tree_starts_at_the_data(tmp_path, capsys):
  """λ = 0 is π = d: (L(d), J(d)) by enumeration; the note says the frontier is over policies."""
  res = _json(["frontier", _write(tmp_path, SMALL), "--lambdas", "0,1"], capsys)
  p = _leaf_table(SMALL)
  m = p.data > 0
  assert_close(res["points"][0]["sft_loss"], -np.sum(p.data[m] * np.log(p.data[m])))
  assert_close(res["points"][0]["reward"], float(p.data @ p.reward))
  assert res["points"][1]["reward"] >= res["points"][0]["reward"]
  assert "autoregressive policy" in res["note"]


def _k2_fixed_point(p, beta):
  """π(a|s) ∝ ρ(a|s) e^{Q^π(s,a)/β} by backward induction over prefixes, in NumPy."""
  rows, value = {}, {}
  for s in sorted(p.support, key=len, reverse=True):
    q = np.zeros(p.k)
    for a in np.flatnonzero(p.support[s]):
      y = s + (int(a),)
      q[a] = value[y] if y in p.support else float(p.reward[p.leaves.index(y)])
    z = np.where(p.support[s], np.log(np.where(p.support[s], p.ref_rows[s], 1.0)) + q / beta,
                 -np.inf)
    rows[s] = np.exp(z - np.logaddexp.reduce(z[p.support[s]]))
    value[s] = float(rows[s] @ q)
  return rows


def test_flow_of_a_construct_ends_at_its_fixed_point(tmp_path, capsys):
  path = _write(tmp_path, SMALL)
  res = _json(["flow", path, "--construct", "k2_loss", "--steps", "1200", "--points", "4",
               "--lr", "4"], capsys)
  p = _leaf_table(SMALL)
  lengths = np.array([len(y) for y in p.leaves], float)
  assert [q["step"] for q in res["points"]] == [0, 300, 600, 900, 1200]
  assert_close(res["points"][0]["expected_length"], float(p.rho @ lengths))
  pi = ref.seq_probs(p, _k2_fixed_point(p, SMALL["beta"]))
  end = res["points"][-1]
  assert_close(end["reward"], float(pi @ p.reward), *TOL_NUMERICAL)
  assert_close(end["expected_length"], float(pi @ lengths), *TOL_NUMERICAL)
  assert_close(end["kl_reference"], ref.kl(pi, p.rho), *TOL_NUMERICAL)


@pytest.mark.parametrize("argv,message", [
    (["flow", "{tree}", "--pipeline", "joint"], "--pipeline: "),
    (["flow", "{tree}"], "--construct/--recipe"),
    (["flow", "{tree}", "--construct", "k2_loss", "--recipe", "x"], "--construct/--recipe"),
    (["flow", "{tree}", "--recipe", "nope"], "--recipe: no tree recipe 'nope'"),
    (["flow", "{atomic}"], "--pipeline: is required"),
    (["flow", "{atomic}", "--pipeline", "joint", "--construct", "k2_loss"], "are for tree files"),
    (["compare", "{tree}", "--recipe-option", "nope.x=1"], "no tree recipe 'nope'"),
])
def test_flow_and_compare_options_are_checked(tmp_path, capsys, argv, message):
  files = {"tree": _write(tmp_path, SMALL), "atomic": _write(tmp_path, ATOMIC, "atomic.json")}
  code, out, err = _run([a.format(**files) for a in argv], capsys)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def _infeasible_field(tree, theta, cfg):
  raise InfeasibleExactField("exact group expectation needs 10^6 multisets (test)")


def test_compare_rows_and_the_estimator_fallback(tmp_path, capsys, monkeypatch):
  """Exact rows against enumeration; a registered recipe is trained (here: k1 in the reward as a
  recipe, which must reach the k1 fixed point); an infeasible one falls back with a notice."""
  k1 = KL_CONSTRUCT_RECIPES["k1_reward"]
  monkeypatch.setitem(registry.TREE_RECIPES, "k1_as_recipe", k1)
  monkeypatch.setitem(registry.TREE_RECIPES, "infeasible",
                      registry.TreeRecipe(name="infeasible", config=None,
                                          field=_infeasible_field, estimate=k1.estimate,
                                          summary="test", reference="test"))
  code, out, err = _run(["compare", _write(tmp_path, SMALL), "--json", "--recipe-steps", "1000",
                         "--recipe-lr", "4"], capsys)
  assert code == 0, err
  assert "notice: infeasible: exact field infeasible" in err
  rows = {r["name"]: r for r in json.loads(out)["recipes"]}
  p = _leaf_table(SMALL)
  beta = SMALL["beta"]
  lengths = np.array([len(y) for y in p.leaves], float)
  gibbs = np.exp(ref.log_gibbs_mp(p, beta))
  m = p.data > 0
  assert_close(rows["k1_reward"]["reward"], float(gibbs @ p.reward))
  assert_close(rows["k1_reward"]["sft_loss"], -float(p.data[m] @ np.log(gibbs[m])))
  assert_close(rows["k1_reward"]["expected_length"], float(gibbs @ lengths))
  assert_close([rows["sft_exact"]["regret"], rows["sft_exact"]["kl_data"]], [0.0, 0.0])
  mean = np.where(m, p.data / lengths, 0.0)
  assert_close(rows["token_mean_sft_exact"]["expected_length"],
               float(mean @ lengths / mean.sum()))
  tilt_d = np.where(m, p.data * np.exp(p.reward / beta), 0.0)
  assert_close(rows["sft_then_rl_exact"]["reward"], float(tilt_d @ p.reward / tilt_d.sum()))
  for k in ("sft_loss", "reward", "regret", "expected_length"):
    assert_close(rows["k1_as_recipe"][k], rows["k1_reward"][k], *TOL_NUMERICAL)
  assert rows["infeasible"]["kind"] == "recipe (Monte-Carlo)"
  assert rows["infeasible"]["status"].startswith("monte_carlo")
  assert abs(rows["infeasible"]["reward"] - rows["k1_reward"]["reward"]) < 0.05  # 512 x 1000
  # Each recipe row shows the config it ran with, as prepared on this tree: DAPO (token-mean)
  # enumerates the distinct (reward, length) pairs of the leaves, and its reward classes.
  pairs = {(float(v), len(y)) for v, y in zip(p.reward, p.leaves)}
  assert rows["dapo"]["config"]["levels"] == len(pairs) == 4
  assert rows["dapo"]["config"]["reward_classes"] == len({v for v, _ in pairs}) == 3
  assert rows["uft"]["config"]["reward_levels"] == 3


def _tree_with(**changes):
  obj = json.loads(json.dumps(SMALL))
  prompt = obj["prompts"][0]
  for key, value in changes.items():
    if key in prompt:
      prompt[key] = value
    else:
      obj[key] = value
  return obj


BIG_VOCAB = [f"t{i}" for i in range(65)]
BAD_TREES = {
    "not_a_response": (_tree_with(data=[{"tokens": ["a"], "weight": 1}]),
                       "prompts[0].data[0].tokens: ['a'] is not a response"),
    "eos_not_last": (_tree_with(data=[{"tokens": ["<eos>", "a"], "weight": 1}]),
                     "prompts[0].data[0].tokens"),
    "data_off_tree": (_tree_with(data=[{"tokens": ["b", "a"], "weight": 1}]),
                      "prompts[0].data[0].tokens: ['b', 'a'] is off the tree"),
    "reference_row_sum": (_tree_with(reference={"nodes": [
        {"prefix": [], "probs": {"<eos>": 0.2, "a": 0.5, "b": 0.2}},
        {"prefix": ["a"], "probs": {"<eos>": 0.6, "b": 0.4}},
        {"prefix": ["b"], "probs": {"<eos>": 1.0}}]}),
        "prompts[0].reference.nodes[0].probs: sums to 0.9, expected 1"),
    "reference_node_missing": (_tree_with(reference={"nodes": [
        {"prefix": [], "probs": {"<eos>": 0.2, "a": 0.5, "b": 0.3}},
        {"prefix": ["a"], "probs": {"<eos>": 0.6, "b": 0.4}}]}),
        "node ['b'] is reachable but has no row"),
    "sequences_sum": (_tree_with(reference={"sequences": [
        {"tokens": ["a", "<eos>"], "p": 0.5}, {"tokens": ["a", "b"], "p": 0.4}]}),
        "prompts[0].reference.sequences: probabilities sum to 0.9"),
    "vocab_over_64": (_tree_with(vocab=["<eos>", "a", "b"] + BIG_VOCAB[3:]),
                      "prompts[0].vocab: has 65 tokens, at most 64 unless allow_large"),
    "depth_over_12": ({**SMALL, "max_length": 13, "prompts": [{
        "reference": {"sequences": [{"tokens": ["a", "<eos>"], "p": 0.5},
                                    {"tokens": ["b"] * 12 + ["<eos>"], "p": 0.5}]},
        "data": [{"tokens": ["a", "<eos>"]}], "reward": {"rule": "length_penalty"}}]},
        "prompts[0].max_length: is 13, at most 12"),
    "weights_sum": (_tree_with(prompt_weights=[0.5]), "prompt_weights: sum to 0.5"),
    "beta_domain": (_tree_with(beta=1e-9), "beta is 1e-09, outside the valid domain"),
    "unknown_field": (_tree_with(temperature=1.0), "temperature: is not a known field"),
}


@pytest.mark.parametrize("command", ["check", "frontier", "compare", "flow"])
@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_bad_trees_exit_2_with_one_line_naming_the_field(tmp_path, capsys, case, command):
  obj, message = BAD_TREES[case]
  path = _write(tmp_path, obj)
  extra = ["--construct", "k1_reward"] if command == "flow" else []
  code, out, err = _run([command, path] + extra, capsys)
  assert code == 2 and out == "", err
  assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and message in err, err
  assert [p.name for p in tmp_path.iterdir()] == ["tree.json"]  # nothing written


@pytest.mark.parametrize("case", ["vocab_over_64", "depth_over_12"])
def test_allow_large_lifts_the_caps(tmp_path, capsys, case):
  """With --allow-large the file is read; the run is then refused only by its budget."""
  path = _write(tmp_path, BAD_TREES[case][0])
  code, out, err = _run(["check", path, "--allow-large", "--max-seconds", "1"], capsys)
  assert code == 2 and out == ""
  assert "check on a tree of" in err and "--max-seconds" in err, err


def test_budget_covers_tree_commands_and_grows_with_the_tree(tmp_path, capsys):
  small = _write(tmp_path, SMALL, "small.json")
  n = 256  # prompts of 40 responses: 10240 slots
  big = _write(tmp_path, _depth_one({"beta": 1.0, "prompt_weights": [1.0 / n] * n,
                                     "data": [[0.5, 0.5] + [0.0] * 38] * n,
                                     "reward": [[float(i % 3) for i in range(40)]] * n,
                                     "reference": [[1.0 / 40] * 40] * n}), "big.json")
  flat = _write(tmp_path, _depth_one(ATOMIC), "flat.json")
  seconds = {}
  for name, path in (("small", small), ("big", big), ("flat", flat)):
    code, _, err = _run(["compare", path, "--max-seconds", "1"], capsys)
    assert code == 2 and "compare on a tree of" in err and "--max-seconds" in err
    seconds[name] = float(err.split("needs about ")[1].split(" ")[0])
  assert seconds["big"] > seconds["flat"] > 1.0  # more slots
  assert seconds["small"] > seconds["flat"]  # more levels
  code, _, err = _run(["flow", small, "--construct", "k1_reward", "--max-seconds", "1"], capsys)
  assert code == 2 and "flow on a tree of" in err and "--max-seconds" in err
  code, _, err = _run(["frontier", small, "--max-seconds", "1"], capsys)
  assert code == 2 and "frontier on a tree of" in err and "--max-seconds" in err


def test_dispatch_keeps_atomic_files_atomic(tmp_path, capsys):
  """An atomic file with prompt labels is not a tree file."""
  res = _json(["frontier", _write(tmp_path, {**ATOMIC, "prompts": ["p", "q"]}, "a.json"),
               "--lambdas", "0"], capsys)
  assert "note" not in res
  assert jax.numpy.isfinite(res["points"][0]["sft_loss"])


def test_tree_figures_are_registered_and_draw_the_right_curves():
  """tree_sft_length: the harmonic mean and G2's excess written out by hand; tree_fixed_points:
  the k1 curve is the Gibbs tilt of the leaves (NumPy), k2 departs from it at depth 3."""
  import matplotlib.pyplot as plt

  from nondecoupling.figures import tree_fixed_points, tree_sft_length
  from nondecoupling.theory.tree.atomic import leaf_instance
  from nondecoupling.verify.cli.figures import figure_builders

  assert {"tree_fixed_points", "tree_sft_length"} <= set(figure_builders())
  fig = tree_sft_length.length_bias(center=4, max_length=8)
  s = np.arange(4)
  short, long_ = 4.0 - s, 4.0 + s
  d_line, mean_line = (line.get_ydata() for line in fig.axes[0].lines)
  assert_close(np.asarray(d_line, float), np.full(4, 4.0))
  assert_close(np.asarray(mean_line, float), 1.0 / (0.5 / short + 0.5 / long_))
  excess = 0.5 * np.log(short) + 0.5 * np.log(long_) + np.log(0.5 / short + 0.5 / long_)
  assert_close(np.asarray(fig.axes[1].lines[0].get_ydata(), float), excess)
  plt.close(fig)

  betas = np.array([0.1, 1.0])
  fig = tree_fixed_points.fixed_points_against_beta(betas=betas)
  inst = leaf_instance(tree_fixed_points.example_tree())
  m = np.asarray(inst.response_mask)[0]
  rho, r = np.asarray(inst.reference)[0][m], np.asarray(inst.reward)[0][m]
  reward_axis = fig.axes[1]
  k1, k2, _ = (np.asarray(line.get_ydata(), float) for line in reward_axis.lines)
  for i, beta in enumerate(betas):
    tilt = rho * np.exp(r / beta)
    assert_close(k1[i], float(tilt @ r / tilt.sum()))
  regret = [np.asarray(line.get_ydata(), float) for line in fig.axes[3].lines]
  assert all(np.all(v >= 0) for v in regret)
  assert abs(fig.axes[0].lines[1].get_ydata()[0] - fig.axes[0].lines[0].get_ydata()[0]) > 1e-3
  plt.close(fig)

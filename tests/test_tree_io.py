"""Tree files: the examples (one per reward rule), every validation rule, writing, allow_large."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tree_reference as ref
from conftest import assert_close
from hypothesis import given

from nondecoupling.theory.tree.instance import Bucket, TreeError, validate_tree
from nondecoupling.verify.errors import InputError
from nondecoupling.verify.tree_io import read_tree, tree_from_dict, tree_to_dict, write_tree
from nondecoupling.verify.tree_strategies import tree_strategy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = {"tree_table.json": "table", "tree_exact_match.json": "exact_match",
         "tree_final_answer.json": "final_answer", "tree_length_penalty.json": "length_penalty"}


def _arrays_match_file(tf, raw):
  """Every leaf's ρ(y), d(y), r(y) in the arrays equals the brute-force reading of the file."""
  levels = [{name: np.asarray(getattr(lv, name)) for name in ("leaf", "data", "reward",
                                                               "reference")}
            for lv in tf.tree.levels]
  for x, p in enumerate(ref.prompts_of(raw)):
    got = {key: [] for key in ("rho", "data", "reward")}
    for y in p.leaves:
      t, i = tf.index[x][y[:-1]]
      assert levels[t]["leaf"][x, i, y[-1]]
      got["data"].append(levels[t]["data"][x, i, y[-1]])
      got["reward"].append(levels[t]["reward"][x, i, y[-1]])
      got["rho"].append(np.prod([levels[j]["reference"][x, tf.index[x][y[:j]][1], y[j]]
                                 for j in range(len(y))]))
    assert_close(got["rho"], p.rho)
    assert_close(got["data"], p.data)
    assert_close(got["reward"], p.reward)
    assert len(p.leaves) == sum(int(lv["leaf"][x].sum()) for lv in levels)


@pytest.mark.parametrize("name", sorted(RULES))
def test_examples_are_valid_and_read_right(name):
  raw = json.loads((EXAMPLES / name).read_text())
  tf = read_tree(EXAMPLES / name)
  rules = {p["reward"].get("rule", "table") for p in raw["prompts"]}
  assert rules == {RULES[name]}
  validate_tree(tf.tree)
  _arrays_match_file(tf, raw)


def test_every_reward_rule_has_an_example():
  assert sorted(RULES.values()) == sorted(["table", "exact_match", "final_answer",
                                           "length_penalty"])
  assert sorted(p.name for p in EXAMPLES.glob("tree_*.json")) == sorted(RULES)


@given(tree_strategy())
def test_strategy_files_read_right(raw):
  _arrays_match_file(tree_from_dict(raw), raw)


def _base():
  return json.loads((EXAMPLES / "tree_table.json").read_text())


def _set(path, value):
  def edit(obj):
    *head, last = path
    for key in head:
      obj = obj[key]
    if value is _DELETE:
      del obj[last]
    else:
      obj[last] = value
  return edit


_DELETE = object()
P0 = ["prompts", 0]
BROKEN = [
    ("beta zero", _set(["beta"], 0.0), "beta: is 0.0, expected > 0"),
    ("beta outside domain", _set(["beta"], 1e-9), "beta is 1e-09, outside the valid domain"),
    ("missing prompts", _set(["prompts"], _DELETE), "prompts: is missing"),
    ("unknown field", _set(["colour"], 1), "colour: is not a known field"),
    ("weights sum", _set(["prompt_weights"], [0.5, 0.4]), "prompt_weights: sum to 0.9"),
    ("weights count", _set(["prompt_weights"], [1.0]), "prompt_weights: has 1 entries"),
    ("eos not in vocab", _set(["eos"], "<end>"), "eos: must be one of the vocab's tokens"),
    ("vocab duplicates", _set(["vocab"], ["<eos>", "yes", "yes"]), "vocab: must be a list of"),
    ("row sum", _set(P0 + ["reference", "nodes", 1, "probs", "yes"], 0.3),
     "prompts[0].reference.nodes[1].probs: sums to 1.1, expected 1"),
    ("unknown token", _set(P0 + ["reference", "nodes", 1, "probs", "perhaps"], 0.0),
     "prompts[0].reference.nodes[1].probs.perhaps: is not a known field"),
    ("missing row", _set(P0 + ["reference", "nodes", 8], _DELETE),
     "prompts[0].reference: node ['maybe', 'no'] is reachable but has no row"),
    ("unreachable row", _set(P0 + ["reference", "nodes", 2, "probs"], {"<eos>": 1.0}),
     "prompts[0].reference: node ['no', 'maybe'] has a row but is not reachable"),
    ("prefix with eos", _set(P0 + ["reference", "nodes", 1, "prefix"], ["<eos>"]),
     "prompts[0].reference.nodes[1].prefix: ['<eos>'] is not an internal node"),
    ("data not a response", _set(P0 + ["data", 0, "tokens"], ["yes"]),
     "prompts[0].data[0].tokens: ['yes'] is not a response: it must end at EOS or at length 3"),
    ("data too long", _set(P0 + ["data", 0, "tokens"], ["yes", "yes", "yes", "<eos>"]),
     "prompts[0].data[0].tokens: ['yes', 'yes', 'yes', '<eos>'] is not a response"),
    ("data off the tree", _set(P0 + ["data", 0, "tokens"], ["no", "yes", "<eos>"]),
     "prompts[0].data[0].tokens: ['no', 'yes', '<eos>'] is off the tree (reference probability 0)"),
    ("data weight", _set(P0 + ["data", 0, "weight"], -1), "prompts[0].data[0].weight: is -1"),
    ("data empty", _set(P0 + ["data"], []), "prompts[0].data: is empty"),
    ("table twice", _set(P0 + ["reward", "table", 1, "tokens"], ["yes", "<eos>"]),
     "prompts[0].reward.table[1].tokens: ['yes', '<eos>'] is listed twice"),
    ("table off the tree", _set(P0 + ["reward", "table", 0, "tokens"], ["no", "no", "<eos>"]),
     "prompts[0].reward.table[0].tokens: ['no', 'no', '<eos>'] is off the tree"),
    ("unknown rule", _set(P0 + ["reward"], {"rule": "bleu"}), "prompts[0].reward.rule: is 'bleu'"),
    ("rule with table", _set(P0 + ["reward"], {"rule": "exact_match", "default": 0}),
     "prompts[0].reward.default: does not go with rule exact_match"),
    ("answer missing", _set(P0 + ["reward"], {"rule": "final_answer"}),
     "prompts[0].reward.answer: is missing"),
    ("answer eos", _set(P0 + ["reward"], {"rule": "final_answer", "answer": "<eos>"}),
     "prompts[0].reward.answer: must not be EOS"),
    ("reward over beta", _set(P0 + ["reward", "default"], 1e7),
     "reward: max |r|/beta = 2e+07 is outside the valid domain"),
    ("sequences sum", _set(["prompts", 1, "reference", "sequences", 0, "p"], 0.5),
     "prompts[1].reference.sequences: probabilities sum to 1.3"),
    ("sequence not a response", _set(["prompts", 1, "reference", "sequences", 0, "tokens"],
                                     ["no", "no"]),
     "prompts[1].reference.sequences[0].tokens: ['no', 'no'] is not a response"),
    ("both reference forms", _set(["prompts", 1, "reference", "nodes"], []),
     "prompts[1].reference: needs exactly one of nodes, sequences"),
    ("max_length", _set(["max_length"], 0), "max_length: must be an integer >= 1"),
    # ρ(maybe, yes, maybe) = 0.2 · 0.4 · 1e-310 = e^-716.3: not a normal float64 (the row still sums to 1)
    ("sequence below float64", _set(P0 + ["reference", "nodes", 7, "probs"],
                                    {"<eos>": 1.0, "maybe": 1e-310}),
     "prompts[0].reference: the sequence ['maybe', 'yes', 'maybe'] has probability e^-716.3, "
     "outside the valid domain (at least e^-708.4"),
]


@pytest.mark.parametrize("edit,message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_every_rule_gives_one_line_naming_the_field(edit, message, tmp_path):
  obj = _base()
  edit(obj)
  path = tmp_path / "tree.json"
  path.write_text(json.dumps(obj))
  with pytest.raises(InputError) as info:
    read_tree(path)
  text = str(info.value)
  assert "\n" not in text
  assert text.startswith(f"{path}: ")
  assert message in text, text


def test_files_that_are_not_trees(tmp_path):
  for content, message in (("{", "broken JSON"), ("[]", "tree: must be a JSON object")):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
      read_tree(path)
  with pytest.raises(InputError, match="no such file"):
    read_tree(tmp_path / "missing.json")


def _large(k: int, depth: int) -> dict:
  vocab = ["<eos>"] + [f"t{i}" for i in range(1, k)]
  nodes = [{"prefix": ["t1"] * t, "probs": {"<eos>": 0.5, "t1": 0.5}} for t in range(depth)]
  return {"beta": 1.0, "vocab": vocab, "eos": "<eos>", "max_length": depth, "prompt_weights": [1.0],
          "prompts": [{"reference": {"nodes": nodes}, "data": [{"tokens": ["<eos>"]}],
                       "reward": {"rule": "length_penalty"}}]}


@pytest.mark.parametrize("k,depth,message", [(65, 2, "prompts[0].vocab: has 65 tokens, at most 64"),
                                             (3, 13, "prompts[0].max_length: is 13, at most 12")])
def test_large_trees_need_allow_large(k, depth, message):
  obj = _large(k, depth)
  with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
    tree_from_dict(obj)
  obj["allow_large"] = True
  tf = tree_from_dict(obj)
  assert tf.tree.depth == depth and tf.tree.vocab_size == k


def test_write_then_read_gives_the_same_arrays(tmp_path):
  tf = read_tree(EXAMPLES / "tree_final_answer.json")
  path = tmp_path / "out.json"
  write_tree(path, tf.prompts, tf.vocabs, np.asarray(tf.tree.prompt_weights), 0.5, tf.names)
  again = read_tree(path)
  for a, b in zip(tf.tree.levels, again.tree.levels):
    for name in ("node", "internal", "leaf", "child", "parent", "token"):
      assert np.array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
    for name in ("reference", "data", "reward"):
      assert_close(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
  assert len(tree_to_dict(tf.prompts, tf.vocabs, [0.5, 0.5], 0.5)["prompts"]) == 2
  with pytest.raises(InputError):
    write_tree(tmp_path / "bad.json", tf.prompts, tf.vocabs, [0.5, 0.6], 0.5)
  assert not (tmp_path / "bad.json").exists()


def test_bucket_padding_and_validation_of_arrays():
  tf = tree_from_dict(_base(), Bucket(3, 5, (1, 4, 8, 2)))
  assert tf.tree.depth == 4 and float(tf.tree.prompt_weights[2]) == 0.0
  validate_tree(tf.tree, padded=True)
  with pytest.raises(TreeError, match="prompt_weights entry 2 is 0"):
    validate_tree(tf.tree)
  with pytest.raises(InputError, match="cannot pad"):
    tree_from_dict(_base(), Bucket(1, 4, (1, 3, 5)))
  level = tf.tree.levels[1]
  bad = dataclasses.replace(tf.tree, levels=(tf.tree.levels[0], dataclasses.replace(
      level, reference=level.reference * np.where(np.arange(5) == 1, 0.5, 1.0))) + tf.tree.levels[2:])
  with pytest.raises(TreeError, match="reference level 1 prompt 0 node 0 sums to"):
    validate_tree(bad, padded=True)

"""Tree instance files (JSON): read with validation, written whole or not at all.

Tree file format (THEORY.md part G)::

  {"beta": 0.5,
   "vocab": ["<eos>", "a", "b"],          # token strings, EOS among them
   "eos": "<eos>",
   "max_length": 3,                       # T: responses end at EOS or at length T
   "prompt_weights": [0.5, 0.5],          # > 0, summing to 1
   "allow_large": false,                  # optional: vocabularies over 64 / depths over 12
   "prompts": [
     {"name": "...",                      # optional label
      "vocab": [...], "eos": "...", "max_length": 2,   # optional per-prompt overrides
      "reference": {"nodes": [{"prefix": [], "probs": {"<eos>": 0.2, "a": 0.8}}, ...]},
        # or {"sequences": [{"tokens": ["a", "<eos>"], "p": 0.5}, ...]} (converted to per-node
        # conditionals); every node reachable under the reference needs a row summing to 1
      "data": [{"tokens": ["a", "<eos>"], "weight": 2.0}, ...],  # SFT data, weights > 0
      "reward": {"table": [{"tokens": [...], "value": 1.0}, ...], "default": 0.0}
        # or {"rule": "exact_match", "correct": 1, "incorrect": 0}  (match a data sequence)
        # or {"rule": "final_answer", "answer": "b", "correct": 1, "incorrect": 0}
        # or {"rule": "length_penalty", "base": 0, "per_token": 0.1}
     }, ...]}

Every rule broken gives one :class:`~nondecoupling.verify.errors.InputError` line naming the field
(e.g. ``prompts[0].data[2]: ...``) and the rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..theory.tree.build import (
  PromptTree,
  build_tree,
  conditionals_from_sequences,
  is_response,
  prefix_of,
)
from ..theory.tree.instance import (
  SEQUENCE_RANGE,
  Bucket,
  SequenceRangeError,
  TreeError,
  TreeInstance,
  validate_tree,
)
from ..theory.tree.rewards import (
  exact_match_reward,
  final_answer_reward,
  length_penalty_reward,
  table_reward,
)
from .errors import InputError
from .reports import atomic_write_json

__all__ = ["TreeFile", "MAX_VOCAB", "MAX_DEPTH", "REWARD_RULES", "tree_from_dict", "read_tree",
           "tree_to_dict", "write_tree"]

MAX_VOCAB = 64
MAX_DEPTH = 12
REWARD_RULES = ("exact_match", "final_answer", "length_penalty")
_TOP = {"beta", "vocab", "eos", "max_length", "prompt_weights", "prompts", "allow_large"}
_PROMPT = {"name", "vocab", "eos", "max_length", "reference", "data", "reward"}
_SUM_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class TreeFile:
  """A parsed tree file: the arrays, and what the arrays do not hold.

  Attributes:
    tree: the validated :class:`~nondecoupling.theory.tree.instance.TreeInstance`.
    prompts: per prompt the host-side :class:`~nondecoupling.theory.tree.build.PromptTree`.
    vocabs: per prompt the token strings.
    names: per prompt its label (or None).
    index: per prompt the map prefix (token ids) -> (level, row).
  """

  tree: TreeInstance
  prompts: list
  vocabs: list
  names: list
  index: list


def _field(where: str, key: str) -> str:
  return f"{where}.{key}" if where else key


def _number(value: Any, where: str, positive: bool = False, nonneg: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise InputError(f"{where}: must be a finite number")
  if positive and value <= 0:
    raise InputError(f"{where}: is {value}, expected > 0")
  if nonneg and value < 0:
    raise InputError(f"{where}: is {value}, expected >= 0")
  return float(value)


def _integer(value: Any, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise InputError(f"{where}: must be an integer >= 1")
  return value


def _object(value: Any, where: str, allowed: set) -> dict:
  if not isinstance(value, dict):
    raise InputError(f"{where or 'tree'}: must be a JSON object")
  unknown = sorted(set(value) - allowed)
  if unknown:
    raise InputError(f"{_field(where, unknown[0])}: is not a known field (known: "
                     f"{', '.join(sorted(allowed))})")
  return value


def _list(value: Any, where: str) -> list:
  if not isinstance(value, list):
    raise InputError(f"{where}: must be a list")
  return value


def _vocab(obj: dict, where: str, default=None) -> tuple[list, int, int]:
  vocab = obj.get("vocab", default[0] if default else None)
  eos = obj.get("eos", default[1] if default else None)
  t_max = obj.get("max_length", default[2] if default else None)
  for key, v in (("vocab", vocab), ("eos", eos), ("max_length", t_max)):
    if v is None:
      raise InputError(f"{_field(where, key)}: is missing")
  if (not isinstance(vocab, list) or not all(isinstance(s, str) for s in vocab)
      or len(set(vocab)) != len(vocab)):
    raise InputError(f"{_field(where, 'vocab')}: must be a list of distinct token strings")
  if len(vocab) < 2:
    raise InputError(f"{_field(where, 'vocab')}: has {len(vocab)} tokens, expected at least 2")
  if not isinstance(eos, str) or eos not in vocab:
    raise InputError(f"{_field(where, 'eos')}: must be one of the vocab's tokens")
  return vocab, vocab.index(eos), _integer(t_max, _field(where, "max_length"))


def _tokens(value: Any, where: str, vocab: list) -> tuple:
  if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
    raise InputError(f"{where}: must be a list of token strings")
  ids = {s: i for i, s in enumerate(vocab)}
  for s in value:
    if s not in ids:
      raise InputError(f"{where}: token {s!r} is not in the vocab")
  return tuple(ids[s] for s in value)


def _response(value: Any, where: str, vocab: list, eos: int, t_max: int) -> tuple:
  seq = _tokens(value, where, vocab)
  if not is_response(seq, eos, t_max):
    raise InputError(f"{where}: {value} is not a response: it must end at EOS or at length "
                     f"{t_max} (max_length), with EOS only last")
  return seq


def _reference(ref: Any, where: str, vocab: list, eos: int, t_max: int) -> dict:
  ref = _object(ref, where, {"nodes", "sequences"})
  if len(ref) != 1:
    raise InputError(f"{where}: needs exactly one of nodes, sequences")
  if "sequences" in ref:
    table = {}
    for j, e in enumerate(_list(ref["sequences"], f"{where}.sequences")):
      w = f"{where}.sequences[{j}]"
      e = _object(e, w, {"tokens", "p"})
      if "tokens" not in e or "p" not in e:
        raise InputError(f"{w}: needs tokens and p")
      seq = _response(e["tokens"], f"{w}.tokens", vocab, eos, t_max)
      if seq in table:
        raise InputError(f"{w}.tokens: {e['tokens']} is listed twice")
      table[seq] = _number(e["p"], f"{w}.p", nonneg=True)
    total = sum(table.values())
    if abs(total - 1.0) > _SUM_TOL:
      raise InputError(f"{where}.sequences: probabilities sum to {total:.10g}, expected 1")
    return conditionals_from_sequences(table, len(vocab), eos, t_max)
  rows = {}
  ids = {s: i for i, s in enumerate(vocab)}
  for j, e in enumerate(_list(ref["nodes"], f"{where}.nodes")):
    w = f"{where}.nodes[{j}]"
    e = _object(e, w, {"prefix", "probs"})
    if "prefix" not in e or "probs" not in e:
      raise InputError(f"{w}: needs prefix and probs")
    prefix = _tokens(e["prefix"], f"{w}.prefix", vocab)
    if eos in prefix or len(prefix) >= t_max:
      raise InputError(f"{w}.prefix: {e['prefix']} is not an internal node (it must be shorter "
                       f"than max_length {t_max} and contain no EOS)")
    if prefix in rows:
      raise InputError(f"{w}.prefix: {e['prefix']} is listed twice")
    probs = _object(e["probs"], f"{w}.probs", set(vocab))
    row = np.zeros(len(vocab))
    for s, p in probs.items():
      row[ids[s]] = _number(p, f"{w}.probs.{s}", nonneg=True)
    if abs(row.sum() - 1.0) > _SUM_TOL:
      raise InputError(f"{w}.probs: sums to {row.sum():.10g}, expected 1")
    rows[prefix] = row
  return rows


def _reachable(rows: dict, where: str, vocab: list, eos: int, t_max: int) -> set:
  """The internal nodes reachable under the reference; every one needs a row, no other may have one."""
  reach, frontier = set(), [()]
  while frontier:
    s = frontier.pop()
    if s not in rows:
      raise InputError(f"{where}: node {[vocab[a] for a in s]} is reachable but has no row")
    reach.add(s)
    frontier += [s + (int(a),) for a in np.flatnonzero(rows[s] > 0)
                 if a != eos and len(s) + 1 < t_max]
  extra = [s for s in rows if s not in reach]
  if extra:
    raise InputError(f"{where}: node {[vocab[a] for a in extra[0]]} has a row but is not "
                     f"reachable (a probability on its path is 0)")
  return reach


def _on_tree(seq: tuple, rows: dict, where: str, vocab: list) -> tuple:
  if seq[:-1] not in rows or not rows[seq[:-1]][seq[-1]] > 0:
    raise InputError(f"{where}: {[vocab[a] for a in seq]} is off the tree (reference "
                     f"probability 0)")
  return seq


def _data(data: Any, where: str, vocab: list, eos: int, t_max: int, rows: dict) -> dict:
  out: dict = {}
  entries = _list(data, where)
  if not entries:
    raise InputError(f"{where}: is empty, expected at least one weighted sequence")
  for j, e in enumerate(entries):
    w = f"{where}[{j}]"
    e = _object(e, w, {"tokens", "weight"})
    if "tokens" not in e:
      raise InputError(f"{w}: needs tokens")
    seq = _on_tree(_response(e["tokens"], f"{w}.tokens", vocab, eos, t_max), rows,
                   f"{w}.tokens", vocab)
    out[seq] = out.get(seq, 0.0) + _number(e.get("weight", 1.0), f"{w}.weight", positive=True)
  total = sum(out.values())
  return {y: v / total for y, v in out.items()}


def _reward(obj: Any, where: str, vocab: list, eos: int, t_max: int, data: dict, rows: dict):
  obj = _object(obj, where, {"table", "default", "rule", "answer", "correct", "incorrect",
                             "base", "per_token"})
  rule = obj.get("rule")
  allowed = {None: {"table", "default"}, "exact_match": {"rule", "correct", "incorrect"},
             "final_answer": {"rule", "answer", "correct", "incorrect"},
             "length_penalty": {"rule", "base", "per_token"}}
  if rule not in allowed:
    raise InputError(f"{where}.rule: is {rule!r}, expected one of {', '.join(REWARD_RULES)} "
                     f"(or a table)")
  extra = sorted(set(obj) - allowed[rule])
  if extra:
    raise InputError(f"{where}.{extra[0]}: does not go with "
                     f"{'a table' if rule is None else 'rule ' + rule}")
  num = lambda key, default: _number(obj.get(key, default), f"{where}.{key}")
  if rule is None:
    if "table" not in obj:
      raise InputError(f"{where}: needs a table or a rule")
    table = {}
    for j, e in enumerate(_list(obj["table"], f"{where}.table")):
      w = f"{where}.table[{j}]"
      e = _object(e, w, {"tokens", "value"})
      if "tokens" not in e or "value" not in e:
        raise InputError(f"{w}: needs tokens and value")
      seq = _on_tree(_response(e["tokens"], f"{w}.tokens", vocab, eos, t_max), rows,
                     f"{w}.tokens", vocab)
      if seq in table:
        raise InputError(f"{w}.tokens: {e['tokens']} is listed twice")
      table[seq] = _number(e["value"], f"{w}.value")
    return table_reward(table, num("default", 0.0))
  if rule == "exact_match":
    return exact_match_reward(data, num("correct", 1.0), num("incorrect", 0.0))
  if rule == "final_answer":
    if "answer" not in obj:
      raise InputError(f"{where}.answer: is missing (the token the final answer must be)")
    answer = _tokens([obj["answer"]], f"{where}.answer", vocab)[0]
    if answer == eos:
      raise InputError(f"{where}.answer: must not be EOS")
    return final_answer_reward(answer, eos, num("correct", 1.0), num("incorrect", 0.0))
  return length_penalty_reward(num("base", 0.0), num("per_token", 0.1))


def _prompt(obj: Any, where: str, default) -> tuple[PromptTree, list, str | None]:
  obj = _object(obj, where, _PROMPT)
  for key in ("reference", "data", "reward"):
    if key not in obj:
      raise InputError(f"{where}.{key}: is missing")
  vocab, eos, t_max = _vocab(obj, where, default)
  name = obj.get("name")
  if name is not None and not isinstance(name, str):
    raise InputError(f"{where}.name: must be a string")
  rows = _reference(obj["reference"], f"{where}.reference", vocab, eos, t_max)
  _reachable(rows, f"{where}.reference", vocab, eos, t_max)
  data = _data(obj["data"], f"{where}.data", vocab, eos, t_max, rows)
  reward = _reward(obj["reward"], f"{where}.reward", vocab, eos, t_max, data, rows)
  return PromptTree(len(vocab), eos, t_max, rows, data, reward), vocab, name


def tree_from_dict(obj: Any, bucket: Bucket | None = None) -> TreeFile:
  """Validates a parsed tree object and builds its arrays (padded to ``bucket`` if given).

  Raises:
    InputError: one line naming the field and the rule.
  """
  obj = _object(obj, "", _TOP)
  for key in ("beta", "prompt_weights", "prompts"):
    if key not in obj:
      raise InputError(f"{key}: is missing, expected it in the tree object")
  beta = _number(obj["beta"], "beta", positive=True)
  allow_large = obj.get("allow_large", False)
  if not isinstance(allow_large, bool):
    raise InputError("allow_large: must be true or false")
  raw_prompts = _list(obj["prompts"], "prompts")
  weights = _list(obj["prompt_weights"], "prompt_weights")
  if not raw_prompts:
    raise InputError("prompts: is empty, expected at least one prompt")
  if len(weights) != len(raw_prompts):
    raise InputError(f"prompt_weights: has {len(weights)} entries, expected {len(raw_prompts)} "
                     f"(one per prompt)")
  w = [_number(v, f"prompt_weights[{i}]", positive=True) for i, v in enumerate(weights)]
  if abs(sum(w) - 1.0) > _SUM_TOL:
    raise InputError(f"prompt_weights: sum to {sum(w):.10g}, expected 1")
  default = None
  if any(k in obj for k in ("vocab", "eos", "max_length")):
    _vocab(obj, "")
    default = (obj["vocab"], obj["eos"], obj["max_length"])
  prompts, vocabs, names = [], [], []
  for i, p in enumerate(raw_prompts):
    where = f"prompts[{i}]"
    prompt, vocab, name = _prompt(p, where, default)
    if not allow_large and len(vocab) > MAX_VOCAB:
      raise InputError(f"{where}.vocab: has {len(vocab)} tokens, at most {MAX_VOCAB} unless "
                       f"allow_large is true")
    if not allow_large and prompt.max_length > MAX_DEPTH:
      raise InputError(f"{where}.max_length: is {prompt.max_length}, at most {MAX_DEPTH} unless "
                       f"allow_large is true")
    prompts.append(prompt)
    vocabs.append(vocab)
    names.append(name)
  try:
    tree, index = build_tree(prompts, w, beta, bucket)
    validate_tree(tree, padded=bucket is not None)
  except SequenceRangeError as e:  # name the sequence, not the arrays' coordinates
    t, x, i, slot = e.where
    tokens = [vocabs[x][a] for a in prefix_of(index[x])[(t, i)] + (slot,)]
    raise InputError(f"prompts[{x}].reference: the sequence {tokens} has probability "
                     f"e^{e.log_prob:.1f}, {SEQUENCE_RANGE}") from None
  except TreeError as e:  # the domain of β and |r|/β (the rest is checked above)
    raise InputError(str(e)) from None
  except ValueError as e:  # a bucket too small for the tree
    raise InputError(f"tree: {e}") from None
  return TreeFile(tree, prompts, vocabs, names, index)


def read_tree(path: str | os.PathLike, bucket: Bucket | None = None) -> TreeFile:
  """Reads and validates a tree file (see the module docstring)."""
  p = Path(path)
  if not p.exists():
    raise InputError(f"{p}: no such file")
  if p.is_dir():
    raise InputError(f"{p}: is a directory, expected a tree JSON file")
  try:
    text = p.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"{p}: cannot read ({e.__class__.__name__})") from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"{p}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  try:
    return tree_from_dict(obj, bucket)
  except InputError as e:
    raise InputError(f"{p}: {e}") from None


def _leaves(prompt: PromptTree, index: dict):
  for s in index:
    for a in np.flatnonzero(np.asarray(prompt.reference[s]) > 0):
      y = s + (int(a),)
      if y not in index:
        yield y


def tree_to_dict(prompts: list, vocabs: list, prompt_weights, beta, names=None) -> dict:
  """The JSON object of host-side prompt trees (reference per node, reward as a full table)."""
  out_prompts = []
  for i, (p, vocab) in enumerate(zip(prompts, vocabs)):
    _, index = build_tree([p], [1.0], beta)
    index = index[0]
    tok = lambda seq: [vocab[a] for a in seq]
    nodes = [{"prefix": tok(s), "probs": {vocab[a]: float(v) for a, v in
                                          enumerate(np.asarray(p.reference[s])) if v > 0}}
             for s in index]
    leaves = sorted(_leaves(p, index))
    entry = {"vocab": list(vocab), "eos": vocab[p.eos], "max_length": p.max_length,
             "reference": {"nodes": nodes},
             "data": [{"tokens": tok(y), "weight": float(v)} for y, v in p.data.items() if v > 0],
             "reward": {"table": [{"tokens": tok(y), "value": float(p.reward(y))} for y in leaves],
                        "default": 0.0}}
    if names is not None and names[i] is not None:
      entry["name"] = names[i]
    out_prompts.append(entry)
  return {"beta": float(beta), "prompt_weights": [float(v) for v in prompt_weights],
          "prompts": out_prompts}


def write_tree(path: str | os.PathLike, prompts: list, vocabs: list, prompt_weights, beta,
               names=None) -> None:
  """Writes a tree file whole (validated first: an invalid tree is never written)."""
  obj = tree_to_dict(prompts, vocabs, prompt_weights, beta, names)
  tree_from_dict(obj)
  atomic_write_json(path, obj)

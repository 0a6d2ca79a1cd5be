"""`bridge extract-tree`: a token tree from real (random-weight) Qwen3 logits, checked against
transformers' Qwen3ForCausalLM (the independent reference), then G1–G4 on it with `check`.

The checkpoint is a tiny random transformers model (tests/test_bridge_forward.py builds it) with a
word-level tokenizer. Reference rows are float32 probabilities: TOL[float32].
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

if os.environ.get("CI", "").lower() == "true":
  import torch  # noqa: F401  (in CI a missing reference is a failure, not a skip)
else:
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")

from conftest import TOL  # noqa: E402
from test_bridge_forward import make_hf_checkpoint  # noqa: E402

from bench.bridge_full_size import transformers_row  # noqa: E402
from nondecoupling.verify.bridge.tokenizer import build_word_tokenizer, encode  # noqa: E402
from nondecoupling.verify.cli import main  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "is", "it", "yes", "no", "?", "."]
PROMPT = "is the cat on the mat ?"
TOP_K, DEPTH = 3, 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf_tree")
  tok = build_word_tokenizer(WORDS, d / "tokenizer.json")
  n = tok.get_vocab_size(with_added_tokens=True)
  hf = make_hf_checkpoint(d, vocab=-(-n // 8) * 8, hidden=32, heads=4, kv_heads=2, head_dim=8,
                          seed=3)
  return d, tok, hf


def run(argv, capsys):
  rc = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def test_extract_tree_matches_transformers_and_check_holds(model, tmp_path, capsys):
  d, tok, hf = model
  out = tmp_path / "tree.json"
  rc, stdout, err = run(["bridge", "extract-tree", "--model", d, "--prompt", PROMPT, "--top-k",
                         TOP_K, "--depth", DEPTH, "--reward", "exact_match", "--demo", "yes .",
                         "--beta", "0.5", "--out", out], capsys)
  assert rc == 0, err
  obj = json.loads(out.read_text())
  assert obj["eos"] == obj["vocab"][0] and obj["max_length"] == DEPTH
  nodes = obj["prompts"][0]["reference"]["nodes"]
  assert len(nodes) == sum(TOP_K ** t for t in range(DEPTH))  # every top-k prefix expanded
  rtol, atol = TOL[np.dtype(np.float32)]
  ids_of = {tok.id_to_token(i): i for i in range(tok.get_vocab_size(with_added_tokens=True))}
  prompt = encode(tok, PROMPT)
  for node in nodes:
    prefix = [ids_of[t] for t in node["prefix"]]
    top, row = transformers_row(hf, prompt + prefix, TOP_K)
    names = [tok.id_to_token(int(i)) for i in top] + [obj["eos"]]
    got = np.array([node["probs"].get(n, 0.0) for n in names])
    np.testing.assert_allclose(got, row, rtol=rtol, atol=atol, err_msg=str(node["prefix"]))
    assert set(node["probs"]) == set(names)
  rc, stdout, err = run(["check", out, "--json"], capsys)
  assert rc == 0, err
  statements = json.loads(stdout)["statements"]
  assert {name.split()[0] for name in statements} == {"G1", "G2", "G3", "G4"}
  exact = [m for name, m in statements.items() if "flow" not in name]
  assert all(m["holds"] for m in exact if m["applies"]), statements
  assert sum(m["applies"] for m in exact) >= 15


@pytest.mark.parametrize("argv, fragment", [
    (["--top-k", "64"], "--top-k 64"),
    (["--depth", "13"], "--depth 13"),
    (["--reward", "exact_match"], "needs --demo"),
    (["--reward", "final_answer", "--answer", "the cat"], "must be one token"),
])
def test_extract_tree_bad_input_is_one_line(argv, fragment, model, tmp_path, capsys):
  d, _, _ = model
  base = {"--model": str(d), "--prompt": PROMPT, "--top-k": "2", "--depth": "2",
          "--reward": "length_penalty", "--out": str(tmp_path / "t.json")}
  for flag, value in zip(argv[::2], argv[1::2]):
    base[flag] = value
  rc, out, err = run(["bridge", "extract-tree", *[x for kv in base.items() for x in kv]], capsys)
  assert rc == 2 and out == "", err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
  assert not (tmp_path / "t.json").exists()


def _peaked_model(model, tmp_path, scale):
  """The test model with its final norm scaled: every token but the first at log p of minus
  hundreds (scale 15) or below float64's exp range (scale 60)."""
  import shutil

  from safetensors.numpy import load_file, save_file

  d, _, _ = model
  peaked = tmp_path / f"peaked{scale:g}"
  shutil.copytree(d, peaked)
  tensors = load_file(str(peaked / "model.safetensors"))
  tensors["model.norm.weight"] = tensors["model.norm.weight"] * scale
  save_file(tensors, str(peaked / "model.safetensors"), metadata={"format": "pt"})
  return peaked


def test_extract_tree_too_peaked_for_float64_is_one_line(model, tmp_path, capsys):
  """Scale 15: each token's probability is a float64 but sequences of them are below its range,
  so the tree is refused with one line naming the options (exit 2, nothing written), not checked
  into NaN margins."""
  out = tmp_path / "t.json"
  rc, stdout, err = run(["bridge", "extract-tree", "--model", _peaked_model(model, tmp_path, 15.0),
                         "--prompt", PROMPT, "--top-k", "3", "--depth", "3", "--reward",
                         "length_penalty", "--out", out], capsys)
  assert rc == 2 and stdout == "", err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("error: --top-k 3 --depth 3: the tree of the model's top tokens is "
                             "refused: "), err
  assert "the sequence [" in lines[0] and "outside the valid domain" in lines[0], err
  assert not out.exists()


def test_extract_tree_leaves_out_tokens_of_probability_zero(model, tmp_path, capsys):
  """Scale 60: top-k tokens whose float64 probability is 0 start no sequence; they are left out
  of their node (which keeps fewer than k + 1 entries) and every statement that applies holds."""
  out = tmp_path / "t.json"
  rc, _, err = run(["bridge", "extract-tree", "--model", _peaked_model(model, tmp_path, 60.0),
                    "--prompt", PROMPT, "--top-k", "3", "--depth", "3", "--reward",
                    "length_penalty", "--out", out], capsys)
  assert rc == 0, err
  nodes = json.loads(out.read_text())["prompts"][0]["reference"]["nodes"]
  assert any(len(n["probs"]) < TOP_K + 1 for n in nodes)
  assert all(p > 0 for n in nodes for p in n["probs"].values())
  rc, stdout, err = run(["check", out, "--json"], capsys)
  assert rc == 0, err
  statements = json.loads(stdout)["statements"]
  assert all(m["holds"] for m in statements.values() if m["applies"]), statements
  assert sum(m["applies"] for m in statements.values()) >= 15


def test_extract_tree_missing_model_is_one_line(tmp_path, capsys):
  rc, out, err = run(["bridge", "extract-tree", "--model", tmp_path / "absent", "--prompt", "x",
                      "--top-k", "2", "--depth", "2", "--reward", "length_penalty"], capsys)
  assert rc == 2 and out == ""
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err

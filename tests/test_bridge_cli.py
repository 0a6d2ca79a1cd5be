"""The `bridge` commands end to end on small random checkpoints built without torch, every loader
error as one line with exit 2, extract -> check (C1 = 0), experiment, demo, figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import assert_close
from scipy.special import softmax

from nondecoupling.verify import budget
from nondecoupling.verify.bridge.checkpoint import load_weights, random_tensors, save_checkpoint
from nondecoupling.verify.bridge.config import Qwen3Config, config_to_dict
from nondecoupling.verify.bridge.demo import build_demo_model
from nondecoupling.verify.bridge.examples import EXAMPLES
from nondecoupling.verify.bridge.extract import read_features
from nondecoupling.verify.bridge.scoring import (
  _put,
  _sequence_step,
  make_mesh,
  replicate,
  score_ids,
)
from nondecoupling.verify.cli import main

SMALL = Qwen3Config(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=1e6,
                    tie_word_embeddings=True)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return build_demo_model(tmp_path_factory.mktemp("demo") / "model")


def run(argv, capsys):
  rc = main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def assert_one_line_error(rc, out, err, fragment):
  assert rc == 2, err
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert fragment in lines[0], lines[0]


def _write(d: Path, cfg_obj=None, tensors=None, tokenizer_from=None):
  d.mkdir(parents=True, exist_ok=True)
  save_checkpoint(d, SMALL, random_tensors(SMALL) if tensors is None else tensors)
  if cfg_obj is not None:
    (d / "config.json").write_text(json.dumps(cfg_obj))
  if tokenizer_from is not None:
    (d / "tokenizer.json").write_text((tokenizer_from / "tokenizer.json").read_text())
  return d


def _cfg(**changes):
  obj = config_to_dict(SMALL)
  obj.update(changes)
  return obj


def _tensors(drop=(), add=None, replace=None):
  t = random_tensors(SMALL, with_lm_head=False)
  for k in drop:
    del t[k]
  t.update(add or {})
  t.update(replace or {})
  return t


def test_score_json_and_table(demo_dir, capsys):
  rc, out, err = run(["bridge", "score", "--model", demo_dir, "--prompt", "the dog chased",
                      "--candidate", " the ball", "--candidate", " acceptable", "--json"], capsys)
  assert rc == 0, err
  obj = json.loads(out)
  assert obj["candidates"] == [" the ball", " acceptable"] and len(obj["logprobs"]) == 2
  assert all(v < 0 for v in obj["logprobs"])
  rc, out, _ = run(["bridge", "score", "--model", demo_dir, "--prompt", "the dog chased",
                    "--candidate", " the ball", "--chat"], capsys)
  assert rc == 0 and "the ball" in out
  # The chat logprob is the one of the rendered prompt.
  rc, out2, _ = run(["bridge", "score", "--model", demo_dir, "--prompt",
                     "<|im_start|>user\nthe dog chased<|im_end|>\n<|im_start|>assistant\n"
                     "<think>\n\n</think>\n\n", "--candidate", " the ball", "--json"], capsys)
  rc, out3, _ = run(["bridge", "score", "--model", demo_dir, "--prompt", "the dog chased",
                     "--candidate", " the ball", "--chat", "--json"], capsys)
  assert json.loads(out2)["logprobs"] == json.loads(out3)["logprobs"]


def test_bucketing_compiles_once_per_bucket(demo_dir):
  weights = load_weights(demo_dir)
  before = _sequence_step._cache_size()
  score_ids(weights, [[3, 4, 5]], [[6, 7], [8]], batch_size=4)
  mid = _sequence_step._cache_size()
  score_ids(weights, [[3, 4, 5, 6, 7, 8, 9, 10], [5]], [[9, 7], [8]], batch_size=4)
  assert _sequence_step._cache_size() == mid and mid <= before + 1


def test_sharded_scoring_equals_single_device(tmp_path):
  """Four host devices (conftest) against one: the same numbers, and the batch really split."""
  assert len(jax.local_devices()) >= 4, "conftest configures 4 host devices"
  cfg = Qwen3Config(vocab_size=160, hidden_size=32, intermediate_size=40, num_layers=2,
                    num_heads=6, num_kv_heads=2, head_dim=8, rope_theta=5e5,
                    tie_word_embeddings=False)
  save_checkpoint(tmp_path, cfg, random_tensors(cfg, seed=3))
  weights = load_weights(tmp_path)
  rng = np.random.default_rng(4)
  prompts = [list(rng.integers(0, 160, n)) for n in (3, 7, 2, 11, 5, 17)]
  one_dev, four_dev = make_mesh(jax.local_devices()[:1]), make_mesh(jax.local_devices()[:4])
  for cands in ([list(rng.integers(0, 160, n)) for n in (2, 1)], [[7], [9], [11]]):
    one = score_ids(weights, prompts, cands, batch_size=3, mesh=one_dev)
    four = score_ids(weights, prompts, cands, batch_size=3, mesh=four_dev)
    assert four.one_forward_per_prompt == (len(cands) == 3)
    assert_close(four.logprobs, one.logprobs, rtol=0, atol=1e-5)
    assert_close(four.hidden, one.hidden, rtol=0, atol=1e-5)
  tokens, = _put(four_dev, np.zeros((4, 16), np.int32))
  assert len(tokens.sharding.device_set) == 4
  assert tokens.addressable_shards[0].data.shape == (1, 16)
  w4 = replicate(weights, four_dev)
  assert len(w4.embed.sharding.device_set) == 4 and w4.embed.sharding.is_fully_replicated


@pytest.mark.parametrize("case,fragment", [
    ("missing", "missing 1 tensor(s): model.layers.1.mlp.up_proj.weight"),
    ("unexpected", "unexpected 1 tensor(s): model.layers.0.self_attn.q_proj.bias"),
    ("shape", "model.layers.0.self_attn.k_proj.weight has shape [8, 16], expected [16, 16]"),
    ("untied_no_head", "missing 1 tensor(s): lm_head.weight"),
    ("sliding", "sliding-window attention is not supported"),
    ("bias", "attention biases are not supported"),
    ("model_type", "model_type is 'llama', expected 'qwen3'"),
    ("act", "hidden_act is 'gelu'"),
    ("rope_scaling", "rope_scaling 'yarn' is not supported"),
    ("rope_type", "rope_type 'linear' is not supported"),
    ("layer_types", "layer_types contains 'sliding_attention'"),
    ("gqa", "not a multiple of num_key_value_heads"),
    ("no_key", "hidden_size is missing"),
    ("broken_json", "broken JSON"),
    ("no_config", "config.json: no such file"),
    ("no_weights", "no *.safetensors file"),
    ("no_tokenizer", "tokenizer.json: no such file"),
    ("bad_tokenizer", "not a tokenizer.json"),
    ("no_dir", "no such model directory"),
])
def test_loader_errors_are_one_line(case, fragment, demo_dir, tmp_path, capsys):
  d = tmp_path / "m"
  tok = demo_dir
  if case == "missing":
    _write(d, tensors=_tensors(drop=["model.layers.1.mlp.up_proj.weight"]), tokenizer_from=tok)
  elif case == "unexpected":
    _write(d, tensors=_tensors(add={"model.layers.0.self_attn.q_proj.bias":
                                    np.zeros(32, np.float32)}), tokenizer_from=tok)
  elif case == "shape":
    _write(d, tensors=_tensors(replace={"model.layers.0.self_attn.k_proj.weight":
                                        np.zeros((8, 16), np.float32)}), tokenizer_from=tok)
  elif case == "untied_no_head":
    _write(d, cfg_obj=_cfg(tie_word_embeddings=False), tokenizer_from=tok)
  elif case == "sliding":
    _write(d, cfg_obj=_cfg(use_sliding_window=True, sliding_window=4), tokenizer_from=tok)
  elif case == "bias":
    _write(d, cfg_obj=_cfg(attention_bias=True), tokenizer_from=tok)
  elif case == "model_type":
    _write(d, cfg_obj=_cfg(model_type="llama"), tokenizer_from=tok)
  elif case == "act":
    _write(d, cfg_obj=_cfg(hidden_act="gelu"), tokenizer_from=tok)
  elif case == "rope_scaling":
    obj = _cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_theta=1e6)
    del obj["rope_parameters"]
    _write(d, cfg_obj=obj, tokenizer_from=tok)
  elif case == "rope_type":
    _write(d, cfg_obj=_cfg(rope_parameters={"rope_type": "linear", "factor": 2.0}),
           tokenizer_from=tok)
  elif case == "layer_types":
    _write(d, cfg_obj=_cfg(layer_types=["full_attention", "sliding_attention"]),
           tokenizer_from=tok)
  elif case == "gqa":
    _write(d, cfg_obj=_cfg(num_key_value_heads=3), tokenizer_from=tok)
  elif case == "no_key":
    obj = _cfg()
    del obj["hidden_size"]
    _write(d, cfg_obj=obj, tokenizer_from=tok)
  elif case == "broken_json":
    _write(d, tokenizer_from=tok)
    (d / "config.json").write_text("{")
  elif case == "no_config":
    _write(d, tokenizer_from=tok)
    (d / "config.json").unlink()
  elif case == "no_weights":
    _write(d, tokenizer_from=tok)
    (d / "model.safetensors").unlink()
  elif case == "no_tokenizer":
    _write(d)
  elif case == "bad_tokenizer":
    _write(d)
    (d / "tokenizer.json").write_text("{}")
  elif case == "no_dir":
    d = tmp_path / "nowhere"
  rc, out, err = run(["bridge", "score", "--model", d, "--prompt", "the", "--candidate", " dog"],
                     capsys)
  assert_one_line_error(rc, out, err, fragment)


def test_tied_head_present_in_file_is_accepted(tmp_path):
  t = random_tensors(SMALL, with_lm_head=True)
  save_checkpoint(tmp_path, SMALL, t)
  w = load_weights(tmp_path)
  assert w.lm_head is w.embed


def test_tied_head_that_differs_warns_and_uses_the_embedding(tmp_path):
  t = random_tensors(SMALL, with_lm_head=False)
  t["lm_head.weight"] = np.ones((40, 16), np.float32)
  save_checkpoint(tmp_path, SMALL, t)
  with pytest.warns(UserWarning, match="lm_head.weight differs from model.embed_tokens.weight"):
    w = load_weights(tmp_path)
  assert w.lm_head is w.embed


def test_bf16_checkpoint_reads_without_torch(tmp_path):
  save_checkpoint(tmp_path, SMALL, random_tensors(SMALL), dtype="bfloat16")
  w32, w16 = load_weights(tmp_path), load_weights(tmp_path, "bfloat16")
  assert w32.embed.dtype == np.float32 and w16.embed.dtype == jax.numpy.bfloat16
  assert_close(np.asarray(w16.embed, np.float32), np.asarray(w32.embed), rtol=0, atol=0)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
  d = tmp_path_factory.mktemp("tsv")
  train, test = d / "train.tsv", d / "test.tsv"
  train.write_text("".join(f"{e.sentence}\t{e.label}\n" for e in EXAMPLES[:40]))
  test.write_text("".join(f"src\t{e.label}\t{'' if e.label else '*'}\t{e.sentence}\n"
                          for e in EXAMPLES[40:60]))
  return train, test


def test_extract_then_check_c1_is_zero(demo_dir, tsv, tmp_path, capsys):
  out_file = tmp_path / "cola.json"
  rc, out, err = run(["bridge", "extract", "--model", demo_dir, "--data", tsv[0], "--beta",
                      "0.25", "--out", out_file, "--limit", "30", "--json"], capsys)
  assert rc == 0, err
  summary = json.loads(out)
  assert summary["sentences"] == 30 and summary["c1_sft_then_rl"] == 0.0
  inst = json.loads(out_file.read_text())
  assert inst["responses"] == [" unacceptable", " acceptable"] and len(inst["prompts"]) == 30
  gold = np.array([e.label for e in EXAMPLES[:30]])
  assert_close(np.array(inst["data"]), np.eye(2)[gold], rtol=0, atol=0)
  assert_close(np.array(inst["reward"]), np.where(np.eye(2)[gold] > 0, 1.0, -1.0), rtol=0, atol=0)
  assert_close(np.array(inst["prompt_weights"]), np.full(30, 1 / 30))
  rc, out, err = run(["check", out_file, "--json"], capsys)
  assert rc == 0, err
  checked = json.loads(out)
  assert checked["c1_sft_then_rl"] == pytest.approx(0.0, abs=1e-12)
  feats = read_features(out_file)
  h = demo_dir and load_weights(demo_dir).config.hidden_size
  assert feats["hidden"].shape == (30, h) and feats["label_rows"].shape == (2, h)
  assert feats["gold"].tolist() == gold.tolist()
  # Single-token labels: the linear head at its initial value reproduces the reference exactly.
  assert (feats["label_ids"][:, 1:] == -1).all()
  assert_close(softmax(feats["hidden"] @ feats["label_rows"].T, axis=1),
               np.array(inst["reference"]), rtol=0, atol=1e-5)


def test_extract_errors(demo_dir, tmp_path, capsys):
  bad = tmp_path / "bad.tsv"
  bad.write_text("a b .\t1\nc d .\tyes\n")
  rc, out, err = run(["bridge", "extract", "--model", demo_dir, "--data", bad, "--beta", "1",
                      "--out", tmp_path / "x.json"], capsys)
  assert_one_line_error(rc, out, err, "line 2: label is 'yes'")
  assert not (tmp_path / "x.json").exists()
  rc, out, err = run(["bridge", "extract", "--model", demo_dir, "--data", bad, "--beta", "-1",
                      "--out", tmp_path / "x.json"], capsys)
  assert rc == 2 and out == ""


@pytest.mark.parametrize("command,fragment", [
    ("extract", "--out {bad}: cannot write there (not a directory)"),
    ("experiment", "--out {bad}: cannot write there (not a directory)"),
    ("demo", "--out {bad}: cannot write there (not a directory)"),
    ("score_memory", "bridge score on 1 row (256 padded tokens) with model"),
    ("extract_time", "(raise it with --max-seconds S)"),
    ("experiment_memory", "(raise it with --max-memory GB)"),
])
def test_unwritable_out_and_limits_fail_at_once(command, fragment, demo_dir, tsv, tmp_path,
                                                capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  bad = blocker / "out"
  argv = {
      "extract": ["extract", "--model", demo_dir, "--data", tsv[0], "--beta", "1", "--out",
                  bad / "x.json"],
      "experiment": ["experiment", "--model", demo_dir, "--train", tsv[0], "--test", tsv[1],
                     "--out", bad],
      "demo": ["demo", "--out", bad],
      "score_memory": ["score", "--model", demo_dir, "--prompt", "the dog", "--candidate",
                       " ball", "--max-memory", "0.01"],
      "extract_time": ["extract", "--model", demo_dir, "--data", tsv[0], "--beta", "1", "--out",
                       tmp_path / "x.json", "--max-seconds", "2"],
      "experiment_memory": ["experiment", "--model", demo_dir, "--train", tsv[0], "--test",
                            tsv[1], "--out", tmp_path / "exp", "--max-memory", "0.1"],
  }[command]
  rc, out, err = run(["bridge", *argv], capsys)
  assert_one_line_error(rc, out, err, fragment.format(bad=bad))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_of_the_estimate(tied):
  """budget.qwen3_params against the tensors of a checkpoint of that config."""
  cfg = Qwen3Config(**{**config_to_dict_fields(SMALL), "tie_word_embeddings": tied})
  tensors = random_tensors(cfg, with_lm_head=not tied)
  assert budget.qwen3_params(cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size,
                             cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                             tied) == sum(t.size for t in tensors.values())


def config_to_dict_fields(cfg: Qwen3Config) -> dict:
  return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def test_experiment_end_to_end(demo_dir, tsv, tmp_path, capsys):
  out_dir = tmp_path / "exp"
  rc, out, err = run(["bridge", "experiment", "--model", demo_dir, "--train", tsv[0], "--test",
                      tsv[1], "--rl-max-steps", "200", "--beta", "0.3", "--out", out_dir,
                      "--json"], capsys)
  assert rc == 0, err
  res = json.loads(out)
  # RL runs to convergence (L-BFGS on the exact full-batch objective), not to the step limit.
  assert res["pipelines"]["sft_then_rl"]["rl_converged"]
  assert res["pipelines"]["rl_then_sft"]["rl_converged"]
  assert res["sizes"] == {"train": 40, "test": 20, "hidden": 64}
  sft_steps = 2 * 3  # 2 epochs of ceil(40 / 16) minibatches
  a = res["pipelines"]["sft_then_rl"]
  assert a["boundary"] == sft_steps and a["rl_steps"] < 200
  assert len(a["curves"]["test_sft_loss"]) == 1 + sft_steps + a["rl_steps"]
  b = res["pipelines"]["rl_then_sft"]
  assert b["boundary"] == b["rl_steps"] and len(b["curves"]["test_reward"]) == 1 + b["boundary"] + 6
  for p in (a, b):
    c = p["curves"]
    assert c["test_sft_loss"][0] == res["base"]["test_sft_loss"]
    # mean@1 with a ±1 reward is 2 P(gold) - 1, bounded by the greedy accuracy's range.
    assert all(-1 <= r <= 1 for r in c["test_reward"])
  assert res["base"]["test_reward"] == pytest.approx(res["base_full_label"]["test_reward"],
                                                     abs=1e-5)
  assert {p.name for p in out_dir.iterdir()} == {"experiment.json", "fig3a_sft_then_rl.png",
                                                 "fig3a_sft_then_rl.pdf", "fig3b_rl_then_sft.png",
                                                 "fig3b_rl_then_sft.pdf"}
  saved = json.loads((out_dir / "experiment.json").read_text())
  assert saved["provenance"]["commit"] == res["provenance"]["commit"] != "unknown"
  # C₁ of Theorem 3.1 is computed on the training instance: 0 on gold labels with ±1 reward.
  assert res["c1_theorem_3_1"] == 0.0
  # The RL phase increases the training objective J_beta (full batch, small steps).
  rc, out, err = run(["bridge", "experiment", "--model", demo_dir, "--train", tsv[0], "--test",
                      tsv[1], "--rl-max-steps", "3", "--optimizer", "adam"], capsys)
  assert rc == 0 and "SFT-then-RL" in out


def test_demo_runs_and_says_random(capsys):
  rc, out, err = run(["bridge", "demo", "--rl-max-steps", "5", "--json"], capsys)
  assert rc == 0, err
  assert "random weights are not a language model" in err
  obj = json.loads(out)
  assert obj["extract"]["c1_sft_then_rl"] == 0.0 and obj["extract"]["sentences"] == 100
  assert set(obj["experiment"]["pipelines"]) == {"sft_then_rl", "rl_then_sft"}
  assert len(obj["score"]["logprobs"]) == 2


def test_figures_from_a_result_and_registry():
  import matplotlib.pyplot as plt

  from nondecoupling.figures.bridge import fig3a_sft_then_rl, fig3b_rl_then_sft
  from nondecoupling.verify.cli.figures import figure_builders
  curves = {k: [0.5, 0.4, 0.45, 0.6] for k in ("test_sft_loss", "test_reward", "test_accuracy",
                                                  "train_sft_loss", "train_reward",
                                                  "train_accuracy")}
  pipe = {"curves": curves, "boundary": 2, "phases": ["base", "sft", "sft", "rl"]}
  result = {"pipelines": {"sft_then_rl": pipe, "rl_then_sft": pipe},
            "base": {k: v[0] for k, v in curves.items()}, "settings": {"beta": 0.1},
            "sizes": {"train": 3, "test": 2}}
  for fn in (fig3a_sft_then_rl, fig3b_rl_then_sft):
    fig = fn(result)
    assert fig.axes and "this project's" in fig.axes[0].get_title()
    plt.close(fig)
  builders = figure_builders()
  assert {"bridge_fig3a_sft_then_rl", "bridge_fig3b_rl_then_sft"} <= set(builders)
  fig = builders["bridge_fig3a_sft_then_rl"]()
  assert fig.axes[0].lines
  plt.close(fig)

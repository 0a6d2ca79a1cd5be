"""A small random Qwen3, built deterministically with no network and no torch, for the demo.

``build_demo_model(dir)`` writes ``config.json``, ``model.safetensors`` (``safetensors.numpy``)
and a word-level ``tokenizer.json`` (``tokenizers``) whose vocabulary covers the built-in example
set, the prompt template and the label words. Random weights are NOT a language model: the demo
shows that the pipeline runs end to end (score, extract, experiment), not what Qwen3 does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .checkpoint import load_model, random_tensors, save_checkpoint
from .config import Qwen3Config
from .examples import EXAMPLES, TEST, TRAIN
from .experiment import ExperimentSettings, run_model_experiment
from .extract import CHAT_LABELS, LABELS, TEMPLATE, extract_file, render_prompt
from .scoring import score_candidates
from .tokenizer import build_word_tokenizer, word_vocabulary

__all__ = ["DEMO_NOTICE", "demo_config", "build_demo_model", "demo_vocabulary", "run_demo"]

DEMO_NOTICE = ("demo: a small Qwen3 with RANDOM weights (seeded, built locally) - random weights "
               "are not a language model; these numbers show the pipeline runs, not what Qwen3 "
               "does")


def demo_vocabulary() -> list[str]:
  """Every word piece of the examples, the template, the labels and the chat roles."""
  texts = [e.sentence for e in EXAMPLES] + [TEMPLATE, *LABELS, *CHAT_LABELS, "user assistant"]
  return word_vocabulary(texts)


def demo_config(vocab_size: int, hidden: int = 64, layers: int = 2, tied: bool = True
                ) -> Qwen3Config:
  """The demo architecture: GQA 2:1, head_dim 16 (heads x head_dim != hidden, as in Qwen3)."""
  return Qwen3Config(vocab_size=-(-vocab_size // 8) * 8, hidden_size=hidden,
                     intermediate_size=2 * hidden, num_layers=layers, num_heads=6,
                     num_kv_heads=3, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6,
                     tie_word_embeddings=tied, max_position_embeddings=512)


def build_demo_model(model_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                     tied: bool = True) -> Path:
  """Writes a deterministic random Qwen3 model directory (config, weights, tokenizer)."""
  d = Path(model_dir)
  tok = build_word_tokenizer(demo_vocabulary(), d / "tokenizer.json")
  cfg = demo_config(tok.get_vocab_size(), hidden=hidden, layers=layers, tied=tied)
  save_checkpoint(d, cfg, random_tensors(cfg, seed=seed, scale=0.8))
  return d


def run_demo(work_dir: str | Path, seed: int = 0, rl_max_steps: int = 300, beta: float = 0.5,
             batch_size: int = 16) -> dict:
  """Builds the demo model in ``work_dir/model`` and runs score, extract and experiment.

  Extract writes ``work_dir/demo_instance.json`` (and its features); the experiment trains on the
  built-in ``TRAIN`` split and evaluates on ``TEST``.

  Returns:
    {"notice", "model", "score", "extract", "experiment"} (JSON-ready).
  """
  work = Path(work_dir)
  model_dir = build_demo_model(work / "model", seed=seed)
  sentence = EXAMPLES[0].sentence
  scored = score_candidates(model_dir, render_prompt(sentence), list(LABELS),
                            batch_size=batch_size)
  scored["prompt"] = render_prompt(sentence)
  extracted = extract_file(model_dir, None, beta, work / "demo_instance.json",
                           batch_size=batch_size, examples=list(EXAMPLES))
  weights, tok = load_model(model_dir)
  settings = ExperimentSettings(beta=beta, rl_max_steps=rl_max_steps, seed=seed)
  experiment = run_model_experiment(weights, tok, list(TRAIN), list(TEST), settings,
                                    batch_size=batch_size)
  return {"notice": DEMO_NOTICE, "model": dataclasses.asdict(weights.config), "score": scored,
          "extract": extracted, "experiment": experiment}

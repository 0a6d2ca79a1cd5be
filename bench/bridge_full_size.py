"""`bridge extract-tree` on a checkpoint laid out exactly as Qwen/Qwen3-0.6B's, with random weights.

The real weights cannot be downloaded on this project's machines, so this run builds a checkpoint
with everything of the official one but its values (random; the embedding scaled, see
``EMBED_SCALE``): the v4 ``config.json`` as published (28 layers, hidden 1024, 16 query and 8 KV
heads of 128, intermediate 3072, vocabulary 151,936, rope_theta 1,000,000 as an integer, tied
embeddings, ``torch_dtype`` bfloat16), and one ``model.safetensors``
of 311 bfloat16 tensors, ``lm_head.weight`` stored beside the tied embedding as in the official
file (751,632,384 stored parameters, about 1.5 GB). A word-level tokenizer stands in for Qwen's
(its ids are a prefix of the model's vocabulary; the top-k may pick ids without a string, which the
tree file names ``<id:N>``). Then, in one process:

1. ``nondecoupling bridge extract-tree`` through the CLI (float32, the exact path): wall time and
   the process's peak RSS;
2. ``nondecoupling check`` on the tree it wrote (G1–G4 on those logits);
3. transformers' ``Qwen3ForCausalLM.from_pretrained`` on the same folder (float32), every node's
   top-k row and the rest's mass recomputed, the largest disagreement with the tree file reported.

Random weights are not a language model: this shows that the loader, the forward pass at full size
and the tree extraction run unchanged on the official layout and agree with transformers there, not
what Qwen3 does. Nothing is asserted. Run: ``python -m bench.bridge_full_size [--top-k K] [--depth D]
[--keep DIR]``; writes bench/out/bridge_full_size.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import write_result

# config.json of Qwen/Qwen3-0.6B as published (v4 form: rope_theta at the top level).
QWEN3_0_6B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "is", "it", "yes", "no", "?", "."]
PROMPT = "is the cat on the mat ?"
# N(0, 1) embeddings tied to the head make logits of size √1024 · O(1): every next-token
# distribution is one token to within 1e-58, which no comparison can tell apart. Scaled by 0.05
# (logits of a few units) the top-k rows are spread, as a trained model's are.
EMBED_SCALE = 0.05


def build(model_dir: Path, seed: int = 0, embed_scale: float = EMBED_SCALE) -> dict:
  """Writes the official layout with random values; returns what was written."""
  from nondecoupling.verify.bridge.checkpoint import random_tensors, save_checkpoint
  from nondecoupling.verify.bridge.config import read_config
  from nondecoupling.verify.bridge.tokenizer import build_word_tokenizer

  (model_dir / "config.json").parent.mkdir(parents=True, exist_ok=True)
  (model_dir / "config.json").write_text(json.dumps(QWEN3_0_6B_CONFIG, indent=2) + "\n")
  cfg = read_config(model_dir)
  t0 = time.perf_counter()
  tensors = random_tensors(cfg, seed=seed, scale=0.8, with_lm_head=True)
  tensors["model.embed_tokens.weight"] *= embed_scale
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # stored twice, as published
  save_checkpoint(model_dir, cfg, tensors, dtype="bfloat16")
  # save_checkpoint writes our config form; put the published one back.
  (model_dir / "config.json").write_text(json.dumps(QWEN3_0_6B_CONFIG, indent=2) + "\n")
  build_word_tokenizer(WORDS, model_dir / "tokenizer.json")
  return {"tensors": len(tensors), "stored_parameters": int(sum(a.size for a in tensors.values())),
          "safetensors_bytes": (model_dir / "model.safetensors").stat().st_size,
          "build_s": time.perf_counter() - t0}


def _cli(argv: list[str]) -> tuple[int, str, str, float]:
  from nondecoupling.verify.cli import main

  out, err = io.StringIO(), io.StringIO()
  t0 = time.perf_counter()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = main(argv)
  return rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def transformers_row(hf, ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
  """(top-k ids, [k + 1] the top-k probabilities and the rest's, renormalised) of the next token
  after ``ids`` from a transformers causal LM (logits in float64), the reference an extracted
  tree's rows are compared with (here and in tests/test_bridge_tree.py)."""
  import torch

  with torch.no_grad():
    logits = hf(torch.tensor([ids])).logits[0, -1].double().numpy()
  p = np.exp(logits - logits.max())
  p /= p.sum()
  top = np.argsort(-p, kind="stable")[:k]
  row = np.append(p[top], p.sum() - p[top].sum())
  return top, row / row.sum()


def against_transformers(model_dir: Path, tree: dict, k: int) -> dict:
  """Largest |p_tree − p_transformers| over every node's k + 1 entries (float32 model)."""
  import torch
  from transformers import Qwen3ForCausalLM

  from nondecoupling.verify.bridge.tokenizer import encode, load_tokenizer

  t0 = time.perf_counter()
  hf = Qwen3ForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
  load_s = time.perf_counter() - t0
  tok = load_tokenizer(model_dir)
  ids_of = {tok.id_to_token(i): i for i in range(tok.get_vocab_size(with_added_tokens=True))}
  name_to_id = lambda n: int(n[4:-1]) if n.startswith("<id:") else ids_of[n]
  prompt = encode(tok, PROMPT)
  worst, worst_log, names_differ = 0.0, 0.0, 0
  nodes = tree["prompts"][0]["reference"]["nodes"]
  for node in nodes:
    top, row = transformers_row(hf, prompt + [name_to_id(t) for t in node["prefix"]], k)
    names = [tok.id_to_token(int(i)) or f"<id:{int(i)}>" for i in top] + [tree["eos"]]
    names_differ += set(names) != set(node["probs"])
    got = np.array([node["probs"].get(n, 0.0) for n in names])
    worst = max(worst, float(np.max(np.abs(got - row))))
    worst_log = max(worst_log, float(np.max(np.abs(np.log(got) - np.log(row)))))
  return {"transformers_load_s": load_s, "nodes": len(nodes), "max_abs_prob_disagreement": worst,
          "max_abs_log_prob_disagreement": worst_log, "nodes_with_other_top_k": int(names_differ)}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--top-k", type=int, default=4)
  ap.add_argument("--depth", type=int, default=3)
  ap.add_argument("--embed-scale", type=float, default=EMBED_SCALE)
  ap.add_argument("--keep", default=None, help="build the checkpoint in DIR and keep it (and the "
                                               "tree, DIR/tree.json)")
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = Path(args.keep) if args.keep else Path(tmp) / "qwen3-0.6b-layout"
    built = build(model_dir, embed_scale=args.embed_scale)
    print(f"built {built['tensors']} tensors, {built['stored_parameters']:,} stored parameters, "
          f"{built['safetensors_bytes']:,} bytes in {built['build_s']:.1f} s", flush=True)
    tree_path = (model_dir if args.keep else Path(tmp)) / "tree.json"
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc, _, err, extract_s = _cli(["bridge", "extract-tree", "--model", str(model_dir), "--prompt",
                                  PROMPT, "--top-k", str(args.top_k), "--depth", str(args.depth),
                                  "--reward", "length_penalty", "--out", str(tree_path)])
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"extract-tree: exit {rc} in {extract_s:.1f} s (peak RSS {rss1 / 2**20:.2f} GiB, "
          f"{rss0 / 2**20:.2f} before) {err.strip()[:200]}", flush=True)
    result = {"checkpoint": built, "embed_scale": args.embed_scale, "top_k": args.top_k,
              "depth": args.depth,
              "extract_tree": {"exit": rc, "wall_s": extract_s, "peak_rss_gib": rss1 / 2**20,
                               "stderr": err.strip()[:500]}}
    if rc == 0:
      tree = json.loads(tree_path.read_text())
      rc_check, out, err, check_s = _cli(["check", str(tree_path), "--json"])
      statements = json.loads(out)["statements"] if rc_check in (0, 1) and out else {}
      applies = {n: m for n, m in statements.items() if m.get("applies")}
      result["check"] = {"exit": rc_check, "wall_s": check_s, "applies": len(applies),
                         "hold": sum(bool(m.get("holds")) for m in applies.values()),
                         "not_holding": {n: {k: m.get(k) for k in ("expected", "margin")}
                                         for n, m in applies.items() if not m.get("holds")}}
      print(f"check: exit {rc_check} in {check_s:.1f} s, {result['check']['hold']} of "
            f"{len(applies)} statements that apply hold", flush=True)
      try:
        result["transformers"] = against_transformers(model_dir, tree, args.top_k)
        print(f"transformers: {result['transformers']}", flush=True)
      except ImportError as e:
        result["transformers"] = f"not run: {e}"
  print(f"wrote {write_result('bridge_full_size', result)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

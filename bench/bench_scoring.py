"""Scoring throughput: 512 CoLA-style prompts, two single-token labels, one forward per prompt.

Model: the random Qwen3 of bench_forward (hidden 512, 8 layers, 8/4 heads, head_dim 64,
intermediate 1536, vocab 32768), float32, with the demo's word-level tokenizer; prompts are the
extract template around the built-in example sentences, cycled to 512 (lengths bucketed to 32).

Measured in the same run:
- ours, fast path: ``score_ids`` with single-token labels, one forward per prompt, only the
  [batch, vocab] logits at each prompt's last position (prompts/s);
- ours, pair path: the same call forced to one forward per (prompt, label) pair (the general
  multi-token path): the speed-up of the fast path;
- transformers (if installed): batches right-padded to the longest prompt, full logits
  [batch, length, vocab], log-softmax read at the last real position (a plain HF loop).

Run: ``.venv/bin/python -m bench.bench_scoring`` (``--model DIR`` with a real checkpoint and its
tokenizer.json; ``--prompts N``; ``--no-torch``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import write_result


def _best_of(fn, repeats: int) -> float:
  fn()  # warm-up: compiles every bucket
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default=None, help="Qwen3 model directory (default: random)")
  ap.add_argument("--prompts", type=int, default=512)
  ap.add_argument("--batch-size", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--no-torch", action="store_true")
  args = ap.parse_args(argv)

  import jax

  from nondecoupling.verify.bridge.checkpoint import load_weights, random_tensors, save_checkpoint
  from nondecoupling.verify.bridge.config import Qwen3Config
  from nondecoupling.verify.bridge.demo import demo_vocabulary
  from nondecoupling.verify.bridge.examples import EXAMPLES
  from nondecoupling.verify.bridge.extract import LABELS, render_prompt
  from nondecoupling.verify.bridge.scoring import make_mesh, replicate, score_ids
  from nondecoupling.verify.bridge.tokenizer import build_word_tokenizer, encode, load_tokenizer

  with tempfile.TemporaryDirectory() as tmp:
    if args.model is None:
      model_dir = Path(tmp)
      tok = build_word_tokenizer(demo_vocabulary(), model_dir / "tokenizer.json")
      cfg = Qwen3Config(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_layers=8,
                        num_heads=8, num_kv_heads=4, head_dim=64, rope_theta=1e6,
                        tie_word_embeddings=True)
      save_checkpoint(model_dir, cfg, random_tensors(cfg, seed=0))
    else:
      model_dir = Path(args.model)
      tok = load_tokenizer(model_dir)
    mesh = make_mesh()
    weights = replicate(load_weights(model_dir), mesh)
    sentences = [EXAMPLES[k % len(EXAMPLES)].sentence for k in range(args.prompts)]
    prompts = [encode(tok, render_prompt(s)) for s in sentences]
    labels = [encode(tok, w) for w in LABELS]
    if any(len(ids) != 1 for ids in labels):
      raise SystemExit(f"labels {LABELS} are not single tokens under this tokenizer")
    res = {}

    def fast():
      res["fast"] = score_ids(weights, prompts, labels, batch_size=args.batch_size, mesh=mesh)

    def pairs():
      res["pairs"] = score_ids(weights, prompts, labels, batch_size=args.batch_size, mesh=mesh,
                               fast_single_token=False)

    t_fast = _best_of(fast, args.repeats)
    t_pairs = _best_of(pairs, max(1, args.repeats - 1))
    assert res["fast"].one_forward_per_prompt
    diff = float(np.abs(res["fast"].logprobs - res["pairs"].logprobs).max())
    n = args.prompts
    result = {
        "benchmark": "bench_scoring", "device": str(jax.devices()[0]),
        "devices": len(jax.local_devices()), "prompts": n, "batch_size": args.batch_size,
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
        "model": "random" if args.model is None else str(args.model),
        "fast_seconds": t_fast, "fast_prompts_per_s": n / t_fast,
        "pairs_seconds": t_pairs, "pairs_prompts_per_s": n / t_pairs,
        "fast_vs_pairs_speedup": t_pairs / t_fast, "fast_vs_pairs_max_abs_diff": diff,
    }
    if not args.no_torch and jax.devices()[0].platform == "cpu":
      try:
        import torch
        import transformers
      except ImportError:
        torch = None
      if torch is not None:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = transformers.Qwen3ForCausalLM.from_pretrained(
            model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
        label_ids = torch.tensor([ids[0] for ids in labels])
        hf_out = np.zeros((n, 2))

        def hf():
          with torch.inference_mode():
            for lo in range(0, n, args.batch_size):
              batch = prompts[lo: lo + args.batch_size]
              t = max(len(p) for p in batch)
              ids = torch.zeros((len(batch), t), dtype=torch.long)
              for k, p in enumerate(batch):
                ids[k, : len(p)] = torch.tensor(p)
              logits = model(ids).logits  # [batch, length, vocab] float32
              last = torch.tensor([len(p) - 1 for p in batch])
              lp = torch.log_softmax(logits[torch.arange(len(batch)), last], dim=-1)
              hf_out[lo: lo + len(batch)] = lp[:, label_ids].double().numpy()

        t_hf = _best_of(hf, max(1, args.repeats - 1))
        result.update({
            "transformers_seconds": t_hf, "transformers_prompts_per_s": n / t_hf,
            "fast_vs_transformers_speedup": t_hf / t_fast,
            "fast_vs_transformers_max_abs_diff": float(np.abs(res["fast"].logprobs
                                                              - hf_out).max()),
        })
  print(f"scoring {n} prompts (mean {result['mean_prompt_tokens']:.1f} tokens), 2 single-token "
        f"labels, batch {args.batch_size}, {result['devices']} device(s) {result['device']}")
  print(f"  ours, one forward per prompt: {result['fast_prompts_per_s']:8.1f} prompts/s")
  print(f"  ours, one forward per pair:   {result['pairs_prompts_per_s']:8.1f} prompts/s  "
        f"(fast path {result['fast_vs_pairs_speedup']:.2f}x; max |diff| {diff:.1e})")
  if "transformers_prompts_per_s" in result:
    print(f"  transformers, full logits:    {result['transformers_prompts_per_s']:8.1f} prompts/s "
          f" (ours {result['fast_vs_transformers_speedup']:.2f}x; max |diff| "
          f"{result['fast_vs_transformers_max_abs_diff']:.1e})")
  write_result("bench_scoring", result)
  return result


if __name__ == "__main__":
  main()

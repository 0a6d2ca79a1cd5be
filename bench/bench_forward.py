"""Forward-pass throughput of the JAX Qwen3 against transformers, and against the JAX matmul peak.

Default workload (issue 4): float32, batch 8 x 128 tokens, a random Qwen3 with hidden 512, 8 layers,
8 heads, 4 KV heads, head_dim 64, intermediate 1536, vocab 32768.

What each side computes (the same thing): token ids [8, 128] -> logits [8, 128, 32768] in
float32 (embedding, 8 decoder layers, final norm, LM head over the full vocabulary; no KV cache, no
loss). transformers: ``Qwen3ForCausalLM`` with ``attn_implementation="sdpa"`` under
``torch.inference_mode()``, ``torch.set_num_threads(cores)``. JAX: ``jax.jit(forward)``
(verify/bridge/qwen3.py; q/k/v and gate/up fused at load time, layers in a ``lax.scan``).

Peak: the same run times a 2048^3 float32 matrix product through JAX (and through torch, for
context). Achieved FLOP/s counts the model's matmul FLOPs (2 per multiply-add): projections, MLP,
LM head and the two attention products over the full T x T square (what both sides compute).

Targets: >= 65% of the JAX matmul peak, >= 0.8x transformers' tokens/s.

Run: ``.venv/bin/python -m bench.bench_forward`` (``--help`` for options: ``--model DIR`` times a
real checkpoint, e.g. Qwen3-0.6B; ``--dtype bfloat16``; ``--no-torch`` skips the baseline). On a GPU
or TPU the same script reports the device's fraction of its own measured matmul peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import write_result


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _time(fn, repeats: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def model_flops(cfg, batch: int, length: int) -> float:
  """Matmul FLOPs of one forward producing full logits (2 per multiply-add)."""
  h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  nq, nkv = cfg.num_heads, cfg.num_kv_heads
  tokens = batch * length
  per_layer = 2 * tokens * (h * (nq + 2 * nkv) * d + nq * d * h + 3 * h * i)
  attn = 2 * 2 * batch * nq * length * length * d
  return cfg.num_layers * (per_layer + attn) + 2 * tokens * h * cfg.vocab_size


def jax_matmul_peak(n: int, dtype, repeats: int) -> float:
  import jax
  import jax.numpy as jnp
  prec = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=prec))
  t = _time(lambda: f(a, b).block_until_ready(), repeats)
  return 2 * n ** 3 / t


def torch_matmul_peak(n: int, repeats: int) -> float:
  import torch
  a, b = torch.randn(n, n), torch.randn(n, n)
  t = _time(lambda: torch.matmul(a, b), repeats)
  return 2 * n ** 3 / t


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default=None, help="a Qwen3 model directory (default: random)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--length", type=int, default=128)
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
  args = ap.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from nondecoupling.verify.bridge.checkpoint import load_weights, random_tensors, save_checkpoint
  from nondecoupling.verify.bridge.config import Qwen3Config
  from nondecoupling.verify.bridge.qwen3 import forward

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  with tempfile.TemporaryDirectory() as tmp:
    if args.model is None:
      cfg = Qwen3Config(vocab_size=32768, hidden_size=512, intermediate_size=1536, num_layers=8,
                        num_heads=8, num_kv_heads=4, head_dim=64, rope_theta=1e6,
                        tie_word_embeddings=True)
      model_dir = Path(tmp)
      save_checkpoint(model_dir, cfg, random_tensors(cfg, seed=0))
    else:
      model_dir = Path(args.model)
    weights = load_weights(model_dir, args.dtype)
    cfg = weights.config
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length))
    tokens_j = jnp.asarray(tokens, jnp.int32)
    fwd = jax.jit(forward)
    t_jax = _time(lambda: fwd(weights, tokens_j).block_until_ready(), args.repeats)
    dt = jnp.float32 if args.dtype == "float32" else jnp.bfloat16
    peak = jax_matmul_peak(2048, dt, args.repeats)
    flops = model_flops(cfg, args.batch, args.length)
    result = {
        "benchmark": "bench_forward", "device": str(device), "platform": device.platform,
        "cores": _cores(), "dtype": args.dtype, "batch": args.batch, "length": args.length,
        "model": "random" if args.model is None else str(args.model),
        "config": {"hidden": cfg.hidden_size, "layers": cfg.num_layers, "heads": cfg.num_heads,
                   "kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
                   "intermediate": cfg.intermediate_size, "vocab": cfg.vocab_size},
        "model_gflop_per_forward": flops / 1e9,
        "jax_seconds": t_jax,
        "jax_tokens_per_s": args.batch * args.length / t_jax,
        "jax_gflops": flops / t_jax / 1e9,
        "jax_matmul_peak_gflops": peak / 1e9,
        "fraction_of_jax_peak": flops / t_jax / peak,
    }
    if not args.no_torch and on_cpu:
      import torch
      import transformers
      torch.set_num_threads(_cores())
      tdtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
      model = transformers.Qwen3ForCausalLM.from_pretrained(
          model_dir, attn_implementation="sdpa", dtype=tdtype).eval()
      ids = torch.tensor(tokens)
      with torch.inference_mode():
        t_torch = _time(lambda: model(ids).logits, args.repeats)
        ref = model(ids[:1, :16]).logits.float().numpy()
      ours = np.asarray(fwd(weights, tokens_j[:1, :16]).astype(jnp.float32))
      result.update({
          "torch_threads": torch.get_num_threads(),
          "transformers_seconds": t_torch,
          "transformers_tokens_per_s": args.batch * args.length / t_torch,
          "transformers_gflops": flops / t_torch / 1e9,
          "torch_matmul_peak_gflops": torch_matmul_peak(2048, args.repeats) / 1e9,
          "speed_ratio_vs_transformers": t_torch / t_jax,
          "max_abs_logit_diff_check": float(np.abs(ours - ref).max()),
      })
  targets = {"fraction_of_jax_peak >= 0.65": result["fraction_of_jax_peak"] >= 0.65}
  if "speed_ratio_vs_transformers" in result:
    targets["speed_ratio_vs_transformers >= 0.8"] = result["speed_ratio_vs_transformers"] >= 0.8
  result["targets_met"] = targets
  print(f"device {result['device']} ({result['cores']} cores), {args.dtype}, "
        f"batch {args.batch} x {args.length}, {flops / 1e9:.1f} GFLOP per forward")
  print(f"  JAX forward:        {result['jax_tokens_per_s']:10.0f} tokens/s  "
        f"{result['jax_gflops']:7.1f} GFLOP/s")
  print(f"  JAX 2048^3 matmul:  {result['jax_matmul_peak_gflops']:7.1f} GFLOP/s peak -> forward at "
        f"{100 * result['fraction_of_jax_peak']:.1f}% of it (target 65%)")
  if "transformers_tokens_per_s" in result:
    print(f"  transformers sdpa:  {result['transformers_tokens_per_s']:10.0f} tokens/s  "
          f"{result['transformers_gflops']:7.1f} GFLOP/s ({result['torch_threads']} threads); "
          f"torch 2048^3 matmul {result['torch_matmul_peak_gflops']:.1f} GFLOP/s")
    print(f"  ratio JAX / transformers tokens/s: {result['speed_ratio_vs_transformers']:.2f} "
          f"(target 0.8); logits agree to {result['max_abs_logit_diff_check']:.1e}")
  print(f"  targets met: {targets}")
  write_result("bench_forward", result)
  return result


if __name__ == "__main__":
  main()

"""The JAX Qwen3 forward and scoring against transformers' Qwen3ForCausalLM (eager, float32).

transformers and torch are the reference; they are a test dependency (the `test` extra). When
CI=true and they are missing, this module fails at import (it never skips in CI).

Tolerances: float32 logits and sequence log-probs within 1e-4 (absolute) of transformers eager.
bfloat16: our bf16 path against transformers' bf16 model within 0.15 + 2% (|x|) on logits and
log-probs (bf16 keeps 8 mantissa bits, so one ulp at |logit| ~ 40 is 0.25; the two implementations
round at the same cast points but accumulate matmuls in different orders), and within twice that
of the float32 reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

if os.environ.get("CI", "").lower() == "true":
  import torch  # noqa: F401  (in CI a missing reference is a failure, not a skip)
  import transformers  # noqa: F401
else:
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from conftest import assert_close  # noqa: E402

from nondecoupling.verify.bridge.checkpoint import load_weights  # noqa: E402
from nondecoupling.verify.bridge.qwen3 import forward  # noqa: E402
from nondecoupling.verify.bridge.scoring import score_ids  # noqa: E402

F32_ATOL = 1e-4
BF16_ATOL = 0.15
BF16_RTOL = 2e-2


def make_hf_checkpoint(path: Path, *, vocab=96, hidden=32, intermediate=48, layers=2, heads=4,
                       kv_heads=2, head_dim=8, tied=True, lm_head_in_file=False,
                       rope_form="rope_parameters", rope_theta=1e4, seed=0):
  """A tiny random Qwen3ForCausalLM saved with save_pretrained (all weights random, norms too).

  ``rope_form="rope_theta"`` rewrites config.json in the 4.51 form (top-level rope_theta,
  rope_scaling null); ``lm_head_in_file`` adds lm_head.weight to a tied model's file, as the
  official Qwen3-0.6B checkpoint has it.
  """
  torch.manual_seed(seed)
  cfg = transformers.Qwen3Config(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
      head_dim=head_dim, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=rope_theta,
      tie_word_embeddings=tied, hidden_act="silu", attn_implementation="eager")
  model = transformers.Qwen3ForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(torch.rand_like(p) + 0.5)
      elif "embed" in name or "lm_head" in name:
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * 0.6 / p.shape[1] ** 0.5)
  model.save_pretrained(path)
  cfg_path = path / "config.json"
  obj = json.loads(cfg_path.read_text())
  if rope_form == "rope_theta":
    obj.pop("rope_parameters", None)
    obj["rope_theta"] = int(rope_theta) if float(rope_theta).is_integer() else rope_theta
    obj["rope_scaling"] = None
    cfg_path.write_text(json.dumps(obj))
  if tied and lm_head_in_file:
    from safetensors.numpy import load_file, save_file
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(f), metadata={"format": "pt"})
  return model


def hf_sequence_logprob(model, prompt, cand) -> float:
  ids = torch.tensor([list(prompt) + list(cand)])
  with torch.no_grad():
    logits = model(ids).logits[0].double()
  lp = torch.log_softmax(logits, -1)
  return float(sum(lp[len(prompt) - 1 + k, c] for k, c in enumerate(cand)))


CASES = {
    # name: (kwargs); together: GQA ratios 1, 2, 3; heads*head_dim != hidden; tied/untied;
    # lm_head present/absent; both rope forms; random norm weights everywhere.
    "gqa1-tied-absent-ropeparams": dict(heads=4, kv_heads=4, head_dim=8, hidden=32, tied=True),
    "gqa2-tied-present-ropetheta": dict(heads=4, kv_heads=2, head_dim=16, hidden=48, tied=True,
                                        lm_head_in_file=True, rope_form="rope_theta",
                                        rope_theta=1e6),
    "gqa3-untied-ropeparams": dict(heads=6, kv_heads=2, head_dim=8, hidden=32, tied=False,
                                   rope_theta=5e5, vocab=160),
    "gqa3-untied-ropetheta-1layer": dict(heads=3, kv_heads=1, head_dim=16, hidden=64, tied=False,
                                         layers=1, rope_form="rope_theta", intermediate=40),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def hf_case(request, tmp_path_factory):
  path = tmp_path_factory.mktemp(request.param)
  model = make_hf_checkpoint(path, **CASES[request.param])
  return path, model


def test_logits_match_transformers_float32(hf_case):
  path, model = hf_case
  weights = load_weights(path)
  tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (3, 13))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  ours = np.asarray(jax.jit(forward)(weights, jnp.asarray(tokens, jnp.int32)))
  assert ours.dtype == np.float32
  assert_close(ours, ref, rtol=0, atol=F32_ATOL)


def test_sequence_logprobs_match_transformers(hf_case):
  path, model = hf_case
  weights = load_weights(path)
  rng = np.random.default_rng(2)
  v = model.config.vocab_size
  prompts = [list(rng.integers(0, v, n)) for n in (1, 5, 17, 9)]  # 17 > 16: two length buckets
  cands = [list(rng.integers(0, v, n)) for n in (1, 3, 2)]
  res = score_ids(weights, prompts, cands, batch_size=4)
  ref = np.array([[hf_sequence_logprob(model, p, c) for c in cands] for p in prompts])
  assert not res.one_forward_per_prompt
  assert_close(res.logprobs, ref, rtol=0, atol=F32_ATOL)
  # Single-token candidates take the one-forward-per-prompt path; same numbers.
  single = [[int(c[0])] for c in cands]
  res1 = score_ids(weights, prompts, single, batch_size=4)
  ref1 = np.array([[hf_sequence_logprob(model, p, c) for c in single] for p in prompts])
  assert res1.one_forward_per_prompt
  assert_close(res1.logprobs, ref1, rtol=0, atol=F32_ATOL)
  # The hidden state at each prompt's last position is transformers' final hidden state there.
  with torch.no_grad():
    hs = [model(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
          for p in prompts]
  assert_close(res1.hidden, np.stack(hs), rtol=0, atol=F32_ATOL)
  assert_close(res.hidden, np.stack(hs), rtol=0, atol=F32_ATOL)


def test_bfloat16_path_close_to_transformers_bfloat16(tmp_path):
  model = make_hf_checkpoint(tmp_path, **CASES["gqa2-tied-present-ropetheta"])
  tokens = np.random.default_rng(3).integers(0, model.config.vocab_size, (2, 12))
  with torch.no_grad():
    ref32 = model(torch.tensor(tokens)).logits.numpy()
    ref16 = model.to(torch.bfloat16)(torch.tensor(tokens)).logits.float().numpy()
  weights = load_weights(tmp_path, dtype="bfloat16")
  assert weights.embed.dtype == jnp.bfloat16
  ours = np.asarray(jax.jit(forward)(weights, jnp.asarray(tokens, jnp.int32)).astype(jnp.float32))
  assert_close(ours, ref16, rtol=BF16_RTOL, atol=BF16_ATOL)
  assert_close(ours, ref32, rtol=2 * BF16_RTOL, atol=2 * BF16_ATOL)
  lp16 = np.asarray(jax.nn.log_softmax(jnp.asarray(ref16), -1))
  ours_lp = np.asarray(jax.nn.log_softmax(jnp.asarray(ours), -1))
  assert_close(ours_lp, lp16, rtol=BF16_RTOL, atol=BF16_ATOL)


@settings(max_examples=5)
@given(ratio=st.sampled_from([1, 2, 3]), kv=st.integers(1, 2), head_dim=st.sampled_from([4, 8, 12]),
       hidden=st.sampled_from([16, 24, 40]), tied=st.booleans(), layers=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_unseen_random_configs_match(tmp_path_factory, ratio, kv, head_dim, hidden, tied, layers,
                                     seed):
  path = tmp_path_factory.mktemp("hyp")
  model = make_hf_checkpoint(path, vocab=64, hidden=hidden, intermediate=hidden + 8,
                             layers=layers, heads=ratio * kv, kv_heads=kv, head_dim=head_dim,
                             tied=tied, seed=seed, rope_theta=float(1 + seed % 7) * 1e4)
  tokens = np.random.default_rng(seed).integers(0, 64, (2, 9))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  ours = np.asarray(forward(load_weights(path), jnp.asarray(tokens, jnp.int32)))
  assert_close(ours, ref, rtol=0, atol=F32_ATOL)

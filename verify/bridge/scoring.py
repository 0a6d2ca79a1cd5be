r"""Batched, bucketed, data-parallel scoring: log p(candidate | prompt) in float32.

.. math:: \log p(c \mid p) = \sum_{k=1}^{|c|} \log p(c_k \mid p, c_{<k})

- Each (prompt, candidate) row is ``prompt ids + candidate ids`` (tokenised separately, then
  concatenated), right-padded to a bucketed length (a power of two, at least 16): jit compiles
  once per bucket, not once per length. Rows are sorted by length so batches pad little.
- Only the hidden states at the positions that predict candidate tokens are gathered and projected
  on the vocabulary: no float32 ``[batch, length, vocab]`` logits are ever built.
- When every candidate is a single token, one forward per prompt serves all candidates: the
  log-softmax at the prompt's last position is read at each candidate id.
- Batches are sharded over all local devices (a 1-D mesh on the batch axis, weights replicated);
  the batch is padded to a multiple of the device count.

Also returns, per prompt, the final hidden state at the prompt's last position (the "answer
position": the state the LM head reads to predict the candidate's first token), in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..devices import device_mesh
from ..errors import InputError
from .checkpoint import Qwen3Weights, load_model
from .qwen3 import final_hidden, gather_positions, logits_from_hidden, token_log_probs
from .tokenizer import encode, render_chat

__all__ = [
    "ScoreResult", "make_mesh", "replicate", "bucket_length", "score_ids", "score_texts",
    "score_candidates",
    "prompt_ids", "MIN_BUCKET",
]

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class ScoreResult:
  """Scores of candidates after prompts.

  Attributes:
    logprobs: [P, C] float64 array of log p(candidate c | prompt p) (computed in float32).
    hidden: [P, H] float32 final hidden state at each prompt's last position.
    one_forward_per_prompt: True when every candidate was one token (the fast path).
  """

  logprobs: np.ndarray
  hidden: np.ndarray
  one_forward_per_prompt: bool


def make_mesh(devices: Sequence | None = None) -> Mesh:
  """A 1-D mesh named "batch" over ``devices`` (default: every local device)."""
  return device_mesh("batch", tuple(jax.local_devices() if devices is None else devices))


def replicate(weights: Qwen3Weights, mesh: Mesh) -> Qwen3Weights:
  """The weights replicated on every device of ``mesh`` (a tied head stays one array)."""
  spec = NamedSharding(mesh, PartitionSpec())
  tied = weights.lm_head is weights.embed
  out = jax.device_put(dataclasses.replace(weights, lm_head=weights.final_norm) if tied
                       else weights, spec)
  return dataclasses.replace(out, lm_head=out.embed) if tied else out


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
  """The smallest power of two >= max(n, minimum)."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@jax.jit
def _single_token_step(weights, tokens, last, cand):
  """[B, T] tokens, [B] last prompt index, [C] candidate ids -> ([B, C] log p, [B, H] hidden)."""
  hidden = gather_positions(final_hidden(weights, tokens), last[:, None])[:, 0, :]  # [B, H]
  logits = logits_from_hidden(weights, hidden).astype(jnp.float32)  # [B, V]: one row per prompt
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  lp = jnp.take(logits, cand, axis=1) - log_z
  return lp, hidden.astype(jnp.float32)


@jax.jit
def _sequence_step(weights, tokens, positions, targets, mask):
  """Sum of log p(targets) at positions (mask: real targets) -> ([B], [B, H] hidden at pos 0)."""
  hidden = gather_positions(final_hidden(weights, tokens), positions)  # [B, K, H]
  lp = token_log_probs(weights, hidden, targets)
  return jnp.sum(jnp.where(mask, lp, 0.0), axis=-1), hidden[:, 0, :].astype(jnp.float32)


def _batches(n: int, batch: int):
  for start in range(0, n, batch):
    yield start, min(n, start + batch)


def _put(mesh: Mesh, *arrays):
  spec = NamedSharding(mesh, PartitionSpec("batch"))
  return [jax.device_put(a, spec) for a in arrays]


def score_ids(weights: Qwen3Weights, prompts: Sequence[Sequence[int]],
              candidates: Sequence[Sequence[int]], batch_size: int = 16,
              mesh: Mesh | None = None,
              on_batch: Callable[[float], None] | None = None,
              fast_single_token: bool = True) -> ScoreResult:
  """Scores every candidate after every prompt (token ids).

  Args:
    weights: the model (replicated onto ``mesh`` here if it is not already).
    prompts: P prompts, each a non-empty list of token ids.
    candidates: C candidates, each a non-empty list of token ids.
    batch_size: rows per forward (rounded up to a multiple of the device count).
    mesh: the device mesh (default: every local device).
    on_batch: called after each batch with the number of prompts it finished (a fraction when
      rows are (prompt, candidate) pairs): progress in prompts.
    fast_single_token: use one forward per prompt when every candidate is one token (False
      forces one forward per (prompt, candidate) pair; same numbers, for benchmarks and tests).

  Returns:
    :class:`ScoreResult` with logprobs [P, C] and hidden [P, H].
  """
  if not prompts or not candidates:
    raise ValueError("need at least one prompt and one candidate")
  if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in candidates):
    raise ValueError("every prompt and candidate needs at least one token")
  mesh = make_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  batch = -(-max(1, batch_size) // n_dev) * n_dev
  weights = replicate(weights, mesh)
  n_p, n_c = len(prompts), len(candidates)
  hid_size = weights.config.hidden_size
  logprobs = np.zeros((n_p, n_c), np.float64)
  hidden = np.zeros((n_p, hid_size), np.float32)
  single = fast_single_token and all(len(c) == 1 for c in candidates)
  if single:
    cand = jnp.asarray([c[0] for c in candidates], jnp.int32)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for lo, hi in _batches(n_p, batch):
      rows = order[lo:hi]
      t = bucket_length(max(len(prompts[i]) for i in rows))
      tokens = np.zeros((batch, t), np.int32)
      last = np.zeros((batch,), np.int32)
      for k, i in enumerate(rows):
        tokens[k, : len(prompts[i])] = prompts[i]
        last[k] = len(prompts[i]) - 1
      lp, h = _single_token_step(weights, *_put(mesh, tokens, last), cand)
      logprobs[rows] = np.asarray(lp)[: len(rows)]
      hidden[rows] = np.asarray(h)[: len(rows)]
      if on_batch:
        on_batch(hi - lo)
    return ScoreResult(logprobs, hidden, True)
  pairs = [(i, j) for i in range(n_p) for j in range(n_c)]
  lengths = [len(prompts[i]) + len(candidates[j]) for i, j in pairs]
  order = np.argsort(lengths, kind="stable")
  k_max = bucket_length(max(len(c) for c in candidates), minimum=1)
  for lo, hi in _batches(len(pairs), batch):
    rows = order[lo:hi]
    t = bucket_length(max(lengths[r] for r in rows))
    tokens = np.zeros((batch, t), np.int32)
    positions = np.zeros((batch, k_max), np.int32)
    targets = np.zeros((batch, k_max), np.int32)
    mask = np.zeros((batch, k_max), bool)
    for k, r in enumerate(rows):
      p, c = prompts[pairs[r][0]], candidates[pairs[r][1]]
      tokens[k, : len(p) + len(c)] = list(p) + list(c)
      positions[k, : len(c)] = np.arange(len(p) - 1, len(p) + len(c) - 1)
      targets[k, : len(c)] = c
      mask[k, : len(c)] = True
    lp, h = _sequence_step(weights, *_put(mesh, tokens, positions, targets, mask))
    lp, h = np.asarray(lp), np.asarray(h)
    for k, r in enumerate(rows):
      i, j = pairs[r]
      logprobs[i, j] = lp[k]
      hidden[i] = h[k]
    if on_batch:
      on_batch((hi - lo) / n_c)
  return ScoreResult(logprobs, hidden, False)


def prompt_ids(tokenizer, prompt: str, chat: bool = False) -> list[int]:
  """Token ids of a prompt, rendered as a ChatML user turn when ``chat``."""
  return encode(tokenizer, render_chat(prompt) if chat else prompt)


def score_texts(weights: Qwen3Weights, tokenizer, prompts: Sequence[str],
                candidates: Sequence[str], chat: bool = False, **kwargs) -> ScoreResult:
  """:func:`score_ids` on texts (prompt and candidate tokenised separately, then joined).

  Raises:
    ValueError: a prompt or candidate that tokenises to nothing (names it).
  """
  p_ids = [prompt_ids(tokenizer, p, chat) for p in prompts]
  c_ids = [encode(tokenizer, c) for c in candidates]
  for kind, texts, ids in (("prompt", prompts, p_ids), ("candidate", candidates, c_ids)):
    for text, t in zip(texts, ids):
      if not t:
        raise ValueError(f"{kind} {text!r} has no tokens")
  return score_ids(weights, p_ids, c_ids, **kwargs)


def score_candidates(model_dir, prompt: str, candidates: Sequence[str], chat: bool = False,
                     dtype: str = "float32", batch_size: int = 16) -> dict:
  """log p(candidate | prompt) for each candidate under the model in ``model_dir``.

  Returns:
    {"candidates": [...], "logprobs": [...]} (JSON-ready).
  """
  weights, tok = load_model(model_dir, dtype)
  try:
    res = score_texts(weights, tok, [prompt], candidates, chat=chat, batch_size=batch_size)
  except ValueError as e:
    raise InputError(str(e)) from None
  return {"candidates": list(candidates), "logprobs": [float(v) for v in res.logprobs[0]]}

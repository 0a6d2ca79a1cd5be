r"""A token tree from a checkpoint's next-token distributions (THEORY.md part G on real logits).

At every node s (a prefix of generated tokens after the prompt) the model's next-token
distribution p(·|prompt, s) (float32 log-softmax over the whole vocabulary) is cut to its top-k
tokens plus one ``OTHER`` token that ends the sequence (the EOS of the tree) and carries the
remaining mass:

.. math:: \rho(a|s) \propto p(a|s)\ (a \in \text{top-}k(s)),\qquad
          \rho(\text{OTHER}|s) \propto \textstyle\sum_{a \notin \text{top-}k(s)} p(a|s),

the rest's mass as a logsumexp over the other tokens (never 1 − Σ top-k, which cancels when the
top-k hold nearly all of it), renormalised in float64 (the row sums to 1 to rounding). The top-k children are expanded to
depth D (the tree's maximum length T = D), so 1 + k + … + k^{D−1} nodes need a forward pass; they
are batched per level (every prefix of a level has the same length) with the KV-free full forward
of :mod:`.qwen3`. SFT data is the demonstration (``demo``) or the greedy path (top-1 at every
node); a demonstration that leaves the tree (a token outside a node's top-k, or ending before
depth D) is the leaf ``prefix·OTHER`` where it leaves. A top-k token whose probability is 0 in
float64 (log p below −745) is left out of its node. Rewards: the named rules of
:mod:`nondecoupling.theory.tree.rewards` (``exact_match`` against the data, ``final_answer`` of
one answer token, ``length_penalty``). The result is a tree file of :mod:`..tree_io` (``vocab``
holds the token strings of the tokenizer, ids without a string as ``<id:N>``), validated by
reading it back.

References: THEORY.md part G; :mod:`..tree_io` (the file format).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..tree_io import MAX_DEPTH, MAX_VOCAB, REWARD_RULES, tree_from_dict
from .checkpoint import Qwen3Weights
from .qwen3 import final_hidden, gather_positions, logits_from_hidden
from .scoring import bucket_length, prompt_ids
from .tokenizer import encode

__all__ = ["OTHER", "next_token_top_k", "extract_tree", "MAX_TOP_K"]

OTHER = "<other>"
MAX_TOP_K = MAX_VOCAB - 1  # k + OTHER tokens per node


@functools.partial(jax.jit, static_argnames="k")
def _top_k_step(weights: Qwen3Weights, tokens, last, k: int):
  """[B, L] tokens, [B] last index -> ([B, k + 1] float32 log p, [B, k] ids) of the next token.

  Column k is log of the mass outside the top-k (a logsumexp over the rest, never 1 − Σ top-k).
  """
  hidden = gather_positions(final_hidden(weights, tokens), last[:, None])[:, 0, :]
  logits = logits_from_hidden(weights, hidden).astype(jnp.float32)
  log_p = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  top, ids = jax.lax.top_k(log_p, k)
  rest = log_p.at[jnp.arange(log_p.shape[0])[:, None], ids].set(-jnp.inf)
  return jnp.concatenate([top, jax.nn.logsumexp(rest, axis=-1, keepdims=True)], axis=-1), ids


def next_token_top_k(weights: Qwen3Weights, rows: Sequence[Sequence[int]], k: int,
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """The top-k next tokens after each row of token ids (all rows of one length, or ragged).

  Args:
    weights: the model.
    rows: R non-empty token-id sequences.
    k: tokens kept per row.
    batch_size: rows per forward (the batch is padded to a power of two up to this).

  Returns:
    ([R, k + 1] float64 log-probabilities (computed in float32) of the top-k tokens, best first,
    and of the rest (−inf when k is the whole vocabulary), [R, k] int token ids).
  """
  out_lp, out_ids = np.zeros((len(rows), k + 1)), np.zeros((len(rows), k), np.int64)
  for lo in range(0, len(rows), batch_size):
    chunk = rows[lo:lo + batch_size]
    b = bucket_length(len(chunk), minimum=1)
    length = bucket_length(max(len(r) for r in chunk))
    tokens = np.zeros((b, length), np.int32)
    last = np.zeros((b,), np.int32)
    for i, r in enumerate(chunk):
      tokens[i, :len(r)] = r
      last[i] = len(r) - 1
    lp, ids = _top_k_step(weights, jnp.asarray(tokens), jnp.asarray(last), k)
    out_lp[lo:lo + len(chunk)] = np.asarray(lp, np.float64)[:len(chunk)]
    out_ids[lo:lo + len(chunk)] = np.asarray(ids)[:len(chunk)]
  return out_lp, out_ids


def _token_name(tokenizer, i: int) -> str:
  name = tokenizer.id_to_token(int(i))
  return f"<id:{int(i)}>" if name is None else name


def _reference_row(log_p: np.ndarray) -> np.ndarray:
  """[k + 1] ρ row: top-k probabilities and OTHER's (the rest's) mass, renormalised in float64."""
  row = np.exp(log_p - np.max(log_p))
  return row / row.sum()


def _leaf_of(seq: Sequence[int], children: dict, depth: int) -> tuple:
  """The leaf (ids, OTHER as None) where a token sequence leaves the tree of ``children``."""
  prefix: tuple = ()
  for a in seq:
    if a not in children[prefix]:
      return prefix + (None,)
    prefix = prefix + (int(a),)
    if len(prefix) == depth:
      return prefix
  return prefix + (None,)


def extract_tree(weights: Qwen3Weights, tokenizer, prompt: str, top_k: int, depth: int,
                 reward: str, beta: float = 1.0, demo: str | None = None,
                 answer: str | None = None, correct: float = 1.0, incorrect: float = 0.0,
                 base: float = 0.0, per_token: float = 0.1, chat: bool = False,
                 allow_large: bool = False, batch_size: int = 64) -> dict:
  """The tree file object (:mod:`..tree_io`) of a prompt's top-k token tree (module docstring).

  Args:
    weights, tokenizer: the model.
    prompt: the prompt text (a ChatML user turn with ``chat``).
    top_k: tokens kept per node (1 ≤ k; k + 1 ≤ 64 unless ``allow_large``).
    depth: D ≥ 1, the maximum response length (≤ 12 unless ``allow_large``).
    reward: one of ``exact_match``, ``final_answer``, ``length_penalty``.
    beta: the KL coefficient written into the file.
    demo: the demonstration text (SFT data; required by ``exact_match``); default greedy path.
    answer: the answer text of ``final_answer`` (one token).
    correct, incorrect: reward values of ``exact_match`` and ``final_answer``.
    base, per_token: ``length_penalty``'s r(y) = base − per_token |y|.
    chat: render the prompt as a ChatML user turn.
    allow_large: allow vocabularies over 64 tokens and depths over 12.
    batch_size: rows per forward.

  Returns:
    The tree file object, already validated by :func:`~..tree_io.tree_from_dict`.

  Raises:
    InputError: one line naming the option and its rule.
  """
  if top_k < 1 or (top_k > MAX_TOP_K and not allow_large):
    raise InputError(f"--top-k {top_k}: must be in [1, {MAX_TOP_K}] (larger needs --allow-large)")
  if depth < 1 or (depth > MAX_DEPTH and not allow_large):
    raise InputError(f"--depth {depth}: must be in [1, {MAX_DEPTH}] (larger needs --allow-large)")
  if reward not in REWARD_RULES:
    raise InputError(f"--reward {reward!r}: expected one of {', '.join(REWARD_RULES)}")
  if reward == "exact_match" and demo is None:
    raise InputError("--reward exact_match: needs --demo TEXT (the demonstration to match)")
  if reward == "final_answer" and answer is None:
    raise InputError("--reward final_answer: needs --answer TEXT (one token)")
  if not np.isfinite(beta) or beta <= 0:
    raise InputError(f"--beta {beta}: must be finite and > 0")
  p_ids = prompt_ids(tokenizer, prompt, chat)
  if not p_ids:
    raise InputError(f"--prompt {prompt!r}: has no tokens")
  k = min(top_k, weights.config.vocab_size)
  children: dict[tuple, list] = {}
  rows: dict[tuple, np.ndarray] = {}
  level = [()]
  for t in range(depth):
    lp, ids = next_token_top_k(weights, [p_ids + list(s) for s in level], k, batch_size)
    nxt = []
    for s, lp_s, ids_s in zip(level, lp, ids):
      row = _reference_row(lp_s)
      # A top-k token whose float64 probability underflows to 0 starts no sequence: left out
      # (the row is best first, so the kept tokens stay aligned with their probabilities).
      keep = row[:-1] > 0
      children[s] = [int(a) for a in ids_s[keep]]
      rows[s] = np.append(row[:-1][keep], row[-1])
      if t + 1 < depth:
        nxt.extend(s + (a,) for a in children[s])
    level = nxt
  used = sorted({a for c in children.values() for a in c})
  names = {a: _token_name(tokenizer, a) for a in used}
  other = OTHER
  while other in names.values():
    other = "<" + other + ">"
  vocab = [other] + [names[a] for a in used]
  if len(vocab) > MAX_VOCAB and not allow_large:
    raise InputError(f"--top-k {top_k} --depth {depth}: the tree uses {len(vocab)} distinct "
                     f"tokens, over {MAX_VOCAB} (needs --allow-large)")
  spell = lambda y: [other if a is None else names[a] for a in y]
  nodes = [{"prefix": spell(s), "probs": {n: float(p) for n, p in
                                          zip(spell(tuple(c) + (None,)), rows[s]) if p > 0}}
           for s, c in children.items()]
  if demo is not None:
    demo_ids = encode(tokenizer, demo)
    if not demo_ids:
      raise InputError(f"--demo {demo!r}: has no tokens")
    data_leaf = _leaf_of(demo_ids, children, depth)
  else:
    greedy: tuple = ()
    while len(greedy) < depth:
      greedy = greedy + (children[greedy][0],)
    data_leaf = greedy
  if reward == "exact_match":
    rule = {"rule": "exact_match", "correct": correct, "incorrect": incorrect}
  elif reward == "final_answer":
    answer_ids = encode(tokenizer, answer)
    if len(answer_ids) != 1:
      raise InputError(f"--answer {answer!r}: must be one token (it is {len(answer_ids)})")
    if answer_ids[0] not in names:
      raise InputError(f"--answer {answer!r}: is in no node's top-{top_k}, so no response "
                       "ends with it")
    rule = {"rule": "final_answer", "answer": names[answer_ids[0]], "correct": correct,
            "incorrect": incorrect}
  else:
    rule = {"rule": "length_penalty", "base": base, "per_token": per_token}
  obj = {"beta": float(beta), "vocab": vocab, "eos": other, "max_length": depth,
         "prompt_weights": [1.0],
         "prompts": [{"name": prompt, "reference": {"nodes": nodes},
                      "data": [{"tokens": spell(data_leaf), "weight": 1.0}], "reward": rule}]}
  if allow_large:
    obj["allow_large"] = True
  try:
    tree_from_dict(obj)  # validated by reading it back
  except InputError as e:  # e.g. sequences too unlikely for float64 (a very peaked model)
    raise InputError(f"--top-k {top_k} --depth {depth}: the tree of the model's top tokens is "
                     f"refused: {e} (a smaller --top-k or --depth keeps likelier sequences)"
                     ) from None
  return obj

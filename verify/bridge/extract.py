r"""A real model's CoLA judgements as a tabular instance, plus linear-head features.

One prompt per labelled sentence (``TEMPLATE``); two responses, the label words (``LABELS``, column
index = CoLA label: 0 " unacceptable", 1 " acceptable"). Then:

- reference ρ(y|x) = the model's probabilities of the two full label sequences, renormalised over
  them: ρ = softmax(log p(label_0 | x), log p(label_1 | x)) (labels may be several tokens; each is
  scored in full);
- data d(·|x) = one-hot on the gold label (the SFT targets);
- reward r(x, y) = +1 for the gold label and −1 otherwise (the paper's verifier);
- prompt weights uniform; β from the caller.

Since r is +1 on the whole support of d, Theorem 3.1's C₁(β) = 0 for every β: exact RL from the
SFT optimum does not raise the SFT loss. (C₁(β; ρ) with ρ the *model* is not 0; that is D1's
threshold quantity.)

Features, saved beside the instance (``FILE`` -> ``FILE.features.npz``): ``hidden`` [N, H] the final
hidden state at the answer position (the prompt's last token, which the LM head reads to predict a
label's first token), ``label_rows`` [2, H] the LM-head rows of the labels' first tokens,
``label_first_ids`` [2], ``label_ids`` [2, K] (padded with -1), ``gold`` [N], ``logprobs`` [N, 2].
The linear head softmax(label_rows · hidden) reproduces ρ exactly when both labels are one token.

References: arXiv 2601.07389 §5 (the CoLA experiment); THEORY.md C1, E.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import log_softmax

from ...theory.instance import Instance, make_instance, rl_stage_after_sft
from ...theory.objectives import c1
from ..errors import InputError
from ..io import write_instance
from .checkpoint import Qwen3Weights, load_model
from .cola import Example, read_cola
from .scoring import score_ids
from .tokenizer import encode, render_chat

__all__ = [
    "TEMPLATE", "LABELS", "CHAT_LABELS", "Extraction", "render_prompt", "extract",
    "write_extraction", "read_features", "features_path", "extract_file",
]

TEMPLATE = ("Is the following sentence grammatically acceptable?\n"
            "Sentence: {sentence}\n"
            "Answer:")
LABELS = (" unacceptable", " acceptable")  # column y = CoLA label y; the space starts a word
CHAT_LABELS = ("unacceptable", "acceptable")  # after "</think>\n\n" the answer starts a line


@dataclasses.dataclass(frozen=True)
class Extraction:
  """An extracted instance and its linear-head features.

  Attributes:
    instance: the tabular instance (N prompts, 2 responses), float64.
    sentences: [N] the sentences (the instance's prompt labels).
    labels: [2] the label words (the instance's response labels).
    gold: [N] int CoLA labels.
    logprobs: [N, 2] log p(label | prompt) under the model (full sequences, float32 compute).
    hidden: [N, H] float32 final hidden state at the answer position.
    label_rows: [2, H] float32 LM-head rows of the labels' first tokens.
    label_ids: token ids of each label.
    chat: whether prompts were rendered as ChatML.
  """

  instance: Instance
  sentences: list[str]
  labels: list[str]
  gold: np.ndarray
  logprobs: np.ndarray
  hidden: np.ndarray
  label_rows: np.ndarray
  label_ids: list[list[int]]
  chat: bool


def render_prompt(sentence: str, chat: bool = False, template: str = TEMPLATE) -> str:
  """The acceptability prompt of one sentence (a ChatML user turn when ``chat``)."""
  text = template.format(sentence=sentence)
  return render_chat(text) if chat else text


def reference_from_logprobs(logprobs: np.ndarray) -> np.ndarray:
  """ρ = softmax over the labels, in float64; entries below the smallest normal are raised to it
  (and the row renormalised) so that ρ > 0 wherever the data may be."""
  rho = np.exp(log_softmax(np.asarray(logprobs, np.float64), axis=-1))
  rho = np.maximum(rho, np.finfo(np.float64).tiny)
  return rho / rho.sum(axis=-1, keepdims=True)


def extract(weights: Qwen3Weights, tokenizer, examples: Sequence[Example], beta: float,
            chat: bool = False, labels: Sequence[str] | None = None,
            template: str = TEMPLATE, **score_kwargs) -> Extraction:
  """Scores the label words after each sentence's prompt and builds the instance.

  Args:
    weights: the model.
    tokenizer: its tokenizer.
    examples: labelled sentences.
    beta: KL coefficient β > 0 of the instance.
    chat: render prompts as ChatML with thinking off.
    labels: the two label words (default ``LABELS``, or ``CHAT_LABELS`` with ``chat``).
    template: the prompt template, with ``{sentence}``.
    **score_kwargs: passed to :func:`verify.bridge.scoring.score_ids` (batch_size, mesh, ...).

  Returns:
    :class:`Extraction`.
  """
  if not examples:
    raise InputError("no examples to extract")
  if not (np.isfinite(beta) and beta > 0):
    raise InputError(f"--beta is {beta}, expected a finite number > 0")
  labels = list(labels if labels is not None else (CHAT_LABELS if chat else LABELS))
  if len(labels) != 2:
    raise InputError(f"expected two label words, got {len(labels)}")
  label_ids = [encode(tokenizer, w) for w in labels]
  for w, ids in zip(labels, label_ids):
    if not ids:
      raise InputError(f"label {w!r} has no tokens under this tokenizer")
  if label_ids[0] == label_ids[1]:
    raise InputError(f"labels {labels[0]!r} and {labels[1]!r} tokenise identically")
  prompts = [encode(tokenizer, render_prompt(e.sentence, chat, template)) for e in examples]
  res = score_ids(weights, prompts, label_ids, **score_kwargs)
  gold = np.array([e.label for e in examples], np.int64)
  n = len(examples)
  data = np.eye(2)[gold]
  inst = make_instance(np.full(n, 1.0 / n), data, np.where(data > 0, 1.0, -1.0), float(beta),
                       reference=reference_from_logprobs(res.logprobs), dtype=np.float64)
  first = np.array([ids[0] for ids in label_ids])
  label_rows = np.asarray(weights.lm_head[first], np.float32)
  return Extraction(inst, [e.sentence for e in examples], labels, gold, res.logprobs, res.hidden,
                    label_rows, label_ids, chat)


def features_path(instance_path: str | Path) -> Path:
  """``FILE.json`` -> ``FILE.features.npz`` (beside the instance)."""
  p = Path(instance_path)
  return p.with_name((p.stem if p.suffix == ".json" else p.name) + ".features.npz")


def write_extraction(path: str | Path, ex: Extraction) -> Path:
  """Writes the instance JSON (validated, whole) and the features .npz beside it.

  Returns:
    The features path.
  """
  fpath = features_path(path)
  k = max(len(ids) for ids in ex.label_ids)
  label_ids = np.full((2, k), -1, np.int64)
  for i, ids in enumerate(ex.label_ids):
    label_ids[i, : len(ids)] = ids
  tmp = fpath.with_name("." + fpath.name + ".tmp.npz")
  fpath.parent.mkdir(parents=True, exist_ok=True)
  np.savez(tmp, hidden=ex.hidden, label_rows=ex.label_rows,
           label_first_ids=label_ids[:, 0], label_ids=label_ids, gold=ex.gold,
           logprobs=ex.logprobs, labels=np.array(ex.labels), chat=np.array(ex.chat))
  write_instance(path, ex.instance, prompts=ex.sentences, responses=ex.labels)
  tmp.replace(fpath)
  return fpath


def read_features(path: str | Path) -> dict[str, np.ndarray]:
  """The features .npz written by :func:`write_extraction` (path of the instance or the npz)."""
  p = Path(path)
  p = p if p.suffix == ".npz" else features_path(p)
  if not p.is_file():
    raise InputError(f"{p}: no such features file")
  with np.load(p) as f:
    return {k: f[k] for k in f.files}


def extract_file(model_dir, data, beta: float, out, limit: int | None = None, chat: bool = False,
                 dtype: str = "float32", batch_size: int = 16, examples=None,
                 on_batch=None) -> dict:
  """Extracts a CoLA file (or given ``examples``) with a model and writes the instance + features.

  Returns:
    A JSON-ready summary: paths, sizes, the model's accuracy and mean@1 reward, C₁ of
    Theorem 3.1 (ρ = d; 0 on gold labels) and C₁(β; ρ = model) (D1's threshold quantity).
  """
  out = Path(out)
  if out.is_dir():
    raise InputError(f"--out {out}: is a directory, expected a file path")
  if examples is None:
    examples = read_cola(data, limit)
  weights, tok = load_model(model_dir, dtype)
  ex = extract(weights, tok, examples, beta, chat=chat, batch_size=batch_size, on_batch=on_batch)
  fpath = write_extraction(out, ex)
  inst = ex.instance
  ref = np.asarray(inst.reference)
  return {
      "instance": str(out), "features": str(fpath), "sentences": len(examples),
      "acceptable": int(ex.gold.sum()), "labels": ex.labels, "label_token_ids": ex.label_ids,
      "template": TEMPLATE, "chat": chat, "beta": beta,
      "model_accuracy": float(np.mean(np.argmax(ref, axis=1) == ex.gold)),
      "model_mean_reward": float(np.mean(2 * ref[np.arange(len(ex.gold)), ex.gold] - 1)),
      "c1_sft_then_rl": float(c1(rl_stage_after_sft(inst))),
      "c1_model_reference": float(c1(inst)),
      "hidden_size": int(ex.hidden.shape[1]),
  }

"""Tokenizer from ``tokenizer.json`` (the ``tokenizers`` library, no transformers) and ChatML.

Qwen3 adds no BOS token (``add_bos_token: false``), so text is encoded with
``add_special_tokens=False``: the ids are exactly the text's tokens. ChatML special tokens in the
text (``<|im_start|>``, ``<|im_end|>``, ``<think>``, ``</think>``) are added tokens of the real
``tokenizer.json`` and map to single ids.

The chat rendering is Qwen3's hybrid template for one user turn with the generation prompt and
thinking off (``enable_thinking=False``)::

  <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n

References: research/anchors-style-and-qwen3.md B.6.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from ..errors import InputError

__all__ = [
    "SPECIAL_TOKENS", "render_chat", "load_tokenizer", "encode", "build_word_tokenizer",
    "word_vocabulary",
]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def render_chat(prompt: str) -> str:
  """One ChatML user turn, the assistant header and the empty think block (thinking off)."""
  return (f"<|im_start|>user\n{prompt}<|im_end|>\n"
          "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def load_tokenizer(model_dir: str | Path):
  """``tokenizers.Tokenizer`` from ``model_dir/tokenizer.json``.

  Raises:
    InputError: the file is missing or not a tokenizer.
  """
  path = Path(model_dir) / "tokenizer.json"
  if not path.is_file():
    raise InputError(f"{path}: no such file (the model directory needs tokenizer.json)")
  try:
    return Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception on a bad file
    raise InputError(f"{path}: not a tokenizer.json ({str(e).splitlines()[0][:120]})") from None


def encode(tokenizer, text: str) -> list[int]:
  """Token ids of ``text`` with no special tokens added (Qwen3 adds no BOS)."""
  return list(tokenizer.encode(text, add_special_tokens=False).ids)


def word_vocabulary(texts) -> list[str]:
  """Sorted distinct pieces of ``texts`` under the ``Whitespace`` pre-tokenizer."""
  pre = Whitespace()
  words = set()
  for text in texts:
    words.update(piece for piece, _ in pre.pre_tokenize_str(text))
  return sorted(words)


def build_word_tokenizer(words, path: str | Path | None = None):
  """A small word-level tokenizer (for tests and the demo, not a real Qwen3 tokenizer).

  Ids: ``<|endoftext|>`` 0, ``[UNK]`` 1, then ``words`` in order, then ``<|im_start|>``,
  ``<|im_end|>``, ``<think>``, ``</think>`` as added tokens (special, split out before
  pre-tokenisation, as in Qwen3's tokenizer.json). Pre-tokenizer: ``Whitespace`` (words and
  punctuation runs; spaces and newlines are dropped), so encoding a prompt and a candidate
  separately and concatenating equals encoding them together.

  Args:
    words: the vocabulary (distinct strings without whitespace).
    path: where to save ``tokenizer.json`` (optional).

  Returns:
    ``tokenizers.Tokenizer``.
  """
  vocab = {"<|endoftext|>": 0, "[UNK]": 1}
  for w in words:
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = Whitespace()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                          for s in SPECIAL_TOKENS])
  if path is not None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    json.loads(Path(path).read_text(encoding="utf-8"))  # written whole and parseable
  return tok

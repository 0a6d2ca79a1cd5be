"""CoLA loading, the built-in examples, tokenizers and ChatML, bucketing (no transformers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nondecoupling.verify.bridge.cola import parse_cola, read_cola
from nondecoupling.verify.bridge.examples import EXAMPLES, TEST, TRAIN
from nondecoupling.verify.bridge.scoring import bucket_length
from nondecoupling.verify.bridge.tokenizer import (
  build_word_tokenizer,
  encode,
  render_chat,
  word_vocabulary,
)
from nondecoupling.verify.errors import InputError

COLA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cola"


# Outside CI a checkout without ../shared skips this; in CI (CI=true) a missing folder fails.
@pytest.mark.skipif(not COLA.is_dir() and os.environ.get("CI") != "true",
                    reason=f"real CoLA not present at {COLA} (outside CI)")
@pytest.mark.parametrize("name,rows,acceptable", [("train.tsv", 8551, 6023),
                                                  ("dev_in_domain.tsv", 527, 365),
                                                  ("dev_out_of_domain.tsv", 516, 354)])
def test_reads_real_cola(name, rows, acceptable):
  ex = read_cola(COLA / name)
  assert len(ex) == rows and sum(e.label for e in ex) == acceptable
  assert all(e.sentence and e.label in (0, 1) for e in ex)
  assert len(read_cola(COLA / name, limit=7)) == 7


def test_builtin_examples_are_our_own_and_balanced_like_cola():
  assert len(EXAMPLES) == 100 and len(TRAIN) + len(TEST) == 100
  assert sum(e.label for e in EXAMPLES) == 60
  assert {e.sentence for e in TRAIN}.isdisjoint({e.sentence for e in TEST})
  assert 0 < sum(e.label for e in TEST) < len(TEST)
  if COLA.is_dir():
    real = set()
    for f in COLA.glob("*.tsv"):
      real.update(e.sentence for e in read_cola(f))
    assert not real & {e.sentence for e in EXAMPLES}, "built-in sentences must not be CoLA's"


def test_two_and_four_column_forms(tmp_path):
  two = tmp_path / "two.tsv"
  two.write_text("the cat sat .\t1\ncat the sat .\t0\n\n", encoding="utf-8")
  four = tmp_path / "four.tsv"
  four.write_text("gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n", encoding="utf-8")
  assert [(e.sentence, e.label) for e in read_cola(two)] == [("the cat sat .", 1),
                                                             ("cat the sat .", 0)]
  assert [(e.sentence, e.label) for e in read_cola(four)] == [("The cat sat.", 1),
                                                              ("Cat the sat.", 0)]


@pytest.mark.parametrize("text,line,fragment", [
    ("a b .\t1\nno tab here\n", 2, "1 tab-separated fields"),
    ("a b .\t1\nc d .\t2\n", 2, "label is '2'"),
    ("a b .\t1\nx\t1\t\tc d .\n", 2, "line 1 has 2"),
    ("src\t1\t\t \n", 1, "sentence is empty"),
    ("a\tb\tc\n", 1, "3 tab-separated fields"),
    ("a b .\t1\n\nc d .\t0\n", 2, "1 tab-separated fields"),
])
def test_malformed_rows_name_the_line(text, line, fragment):
  with pytest.raises(InputError) as e:
    parse_cola(text, "f.tsv")
  msg = str(e.value)
  assert msg.startswith(f"f.tsv: line {line}: ") and fragment in msg and "\n" not in msg


def test_empty_or_missing_file(tmp_path):
  (tmp_path / "e.tsv").write_text("\n\n")
  with pytest.raises(InputError, match="no examples"):
    read_cola(tmp_path / "e.tsv")
  with pytest.raises(InputError, match="no such file"):
    read_cola(tmp_path / "missing.tsv")


def test_chatml_rendering_exact_string():
  assert render_chat("Is it ok?") == ("<|im_start|>user\nIs it ok?<|im_end|>\n"
                                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def _byte_level_bpe(tmp_path):
  """A synthetic byte-level BPE tokenizer.json (Qwen3's kind) with ChatML added tokens."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([e.sentence for e in EXAMPLES] + ["user assistant Answer:"], trainer)
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                          for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
  tok.add_tokens([AddedToken(s, special=False, normalized=False)
                  for s in ("<think>", "</think>")])
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return Tokenizer.from_file(str(path))


def test_chatml_ids_on_byte_level_bpe(tmp_path):
  tok = _byte_level_bpe(tmp_path)
  sid = {s: tok.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>", "<think>", "</think>")}
  assert all(v is not None for v in sid.values())
  prompt = "the dog chased the ball ."
  ids = encode(tok, render_chat(prompt))
  expected = ([sid["<|im_start|>"]] + encode(tok, "user\n" + prompt) + [sid["<|im_end|>"]]
              + encode(tok, "\n") + [sid["<|im_start|>"]] + encode(tok, "assistant\n")
              + [sid["<think>"]] + encode(tok, "\n\n") + [sid["</think>"]] + encode(tok, "\n\n"))
  assert ids == expected
  assert tok.decode(ids, skip_special_tokens=False) == render_chat(prompt)
  assert encode(tok, prompt)[0] != sid["<|im_start|>"]  # no special token added without --chat


def test_word_tokenizer_concatenation_and_specials(tmp_path):
  words = word_vocabulary(["the cat sat .", "Answer: acceptable unacceptable"])
  tok = build_word_tokenizer(words, tmp_path / "tokenizer.json")
  assert encode(tok, "the cat sat .") + encode(tok, " acceptable") == encode(
      tok, "the cat sat . acceptable")
  assert len(encode(tok, "<|im_start|>user")) == 2
  assert encode(tok, "zebra") == [1]  # [UNK]


@pytest.mark.parametrize("n,expected", [(1, 16), (16, 16), (17, 32), (100, 128), (129, 256)])
def test_bucket_length(n, expected):
  assert bucket_length(n) == expected
  assert bucket_length(n, minimum=1) == max(1, 1 << (n - 1).bit_length())


def test_examples_split_is_deterministic():
  assert [e.sentence for e in TRAIN][:3] == [e.sentence for e in EXAMPLES if True][:2] + [
      EXAMPLES[3].sentence]
  assert np.all([e.label in (0, 1) for e in EXAMPLES])

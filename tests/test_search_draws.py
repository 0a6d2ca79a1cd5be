"""The shared searches of `verify`: examples drawn once (and kept), evaluated in one batch.

verify/search_draws.py draws the examples a Hypothesis search evaluates while nothing fails;
verify/search.py evaluates a group of statements on all of them at once. Checked here: the drawn
examples are exactly those a statement's own search hands its predicate (a spy on the predicate,
an independent path through Hypothesis), the stored examples are read back instead of drawn, and
the batched verdicts equal the one-by-one verdicts the searches compute.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from hypothesis.errors import NoSuchExample

from nondecoupling.verify import search, search_draws, stored_programs
from nondecoupling.verify.registry import statement_by_name
from nondecoupling.verify.tree_checks import (
  SEARCHABLE_TREE_STATEMENTS,
  evaluate_tree_file,
  evaluate_tree_files,
)

N, SEED = 12, 7


@pytest.fixture
def program_dir(tmp_path, monkeypatch):
  monkeypatch.setitem(stored_programs._STATE, "dir", tmp_path)
  return tmp_path


def _same(a, b) -> bool:
  """Equal drawn examples: (raw dict or tree object, θ or probe seed), arrays compared exactly."""
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
    return np.array_equal(np.asarray(a), np.asarray(b))
  return a == b


@pytest.mark.parametrize("uses_probe", [False, True])
def test_drawn_instances_are_those_the_search_evaluates(monkeypatch, program_dir, uses_probe):
  seen = []
  monkeypatch.setattr(search, "_fails", lambda s, raw, theta: seen.append((raw, theta)) or False)
  stmt = statement_by_name("sft_excess_is_kl" if uses_probe else "sft_loss_after_rl")
  with pytest.raises(NoSuchExample):
    search._find_instance((stmt,), uses_probe, N, SEED)
  drawn = search_draws.drawn_examples("test instances", search._instance_draws(uses_probe), N,
                                      SEED)
  valid = [e for e in drawn if search.is_valid_raw(e[0])]  # the search skips invalid draws
  assert len(drawn) >= N and len(valid) == len(seen) > 0
  assert _same(valid, seen)


def test_drawn_trees_are_those_the_search_evaluates(monkeypatch, program_dir):
  seen = []
  monkeypatch.setattr(search, "_tree_fails", lambda s, example: seen.append(example) or False)
  stmt = statement_by_name("G1 soft_value_is_log_partition")
  with pytest.raises(NoSuchExample):
    search._find_tree((stmt,), N, SEED)
  drawn = search_draws.drawn_examples("test trees", search._tree_draws(), N, SEED)
  assert len(drawn) == len(seen) >= N
  assert _same(drawn, seen)


def test_stored_draws_are_read_back_not_drawn(monkeypatch, program_dir):
  strategy = search._instance_draws(False)
  first = search_draws.drawn_examples("stored", strategy, N, SEED)
  files = list(program_dir.glob("*.draws"))
  assert len(files) == 1

  def no_drawing(*args):
    raise AssertionError("drew although the examples were stored")

  monkeypatch.setattr(search_draws, "_draw", no_drawing)
  assert _same(search_draws.drawn_examples("stored", strategy, N, SEED), first)
  with pytest.raises(AssertionError, match="drew"):  # another seed is another file
    search_draws.drawn_examples("stored", strategy, N, SEED + 1)
  files[0].write_bytes(b"not a pickle")  # an unreadable file is drawn again and replaced
  monkeypatch.undo()
  monkeypatch.setitem(stored_programs._STATE, "dir", program_dir)
  assert _same(search_draws.drawn_examples("stored", strategy, N, SEED), first)
  assert _same(search_draws._read(files[0]), first)


def test_without_a_program_folder_nothing_is_kept(monkeypatch):
  monkeypatch.setitem(stored_programs._STATE, "dir", None)
  calls = []
  real = search_draws._draw
  monkeypatch.setattr(search_draws, "_draw", lambda *a: calls.append(a) or real(*a))
  for _ in range(2):
    search_draws.drawn_examples("no folder", search._instance_draws(False), 3, SEED)
  assert len(calls) == 2


def test_batched_instance_verdicts_equal_one_by_one(program_dir):
  """The shared search's batched program against each statement's own (padded, unbatched)."""
  group = tuple(statement_by_name(n) for n in ("sft_loss_after_rl", "sft_excess_is_kl",
                                                "gibbs_variational"))
  drawn = search_draws.drawn_examples("batched", search._instance_draws(True), N, SEED)
  rows = [search.pad_raw(raw, theta) for raw, theta in drawn]
  cols = [np.stack(c) for c in zip(*rows)]
  batched = search._compiled_group(tuple(s.fn for s in group))(*cols)
  for s, v in zip(group, batched):
    for i, (raw, theta) in enumerate(drawn):
      one = search.evaluate_raw(s, raw, theta)
      assert bool(np.asarray(v.applies)[i]) == bool(one.applies), (s.name, i)
      assert_close(np.asarray(v.margin)[i], one.margin, err_msg=f"{s.name} [{i}]")
      assert_close(np.asarray(v.slack)[i], one.slack, err_msg=f"{s.name} [{i}]")
  assert not search._group_fails(group, drawn)


def test_batched_tree_verdicts_equal_one_by_one(program_dir):
  """Trees laid into the sweep's bucket with their probe logits moved along: the same verdicts
  as each tree at the search's small bucket."""
  drawn = search_draws.drawn_examples("batched trees", search._tree_draws(), N, SEED)
  batched = evaluate_tree_files(drawn)
  applied = 0
  for name in sorted(SEARCHABLE_TREE_STATEMENTS):
    v = batched[name]
    for i, (raw, seed) in enumerate(drawn):
      one = evaluate_tree_file(name, raw, seed)
      assert bool(v.applies[i]) == bool(one.applies), (name, i)
      if bool(one.applies):
        applied += 1
        assert_close(v.margin[i], one.margin, err_msg=f"{name} [{i}]")
  assert applied > len(drawn)

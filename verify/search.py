"""Counterexample search with Hypothesis: find (and shrink) an instance where a statement fails.

The search draws small instances (at most ``SEARCH_SHAPE``) from
:func:`.strategies.instance_strategy`, pads them to ``SEARCH_SHAPE`` so the statement compiles
once, and asks Hypothesis for an example on which the statement applies and fails. Hypothesis
shrinks what it finds to a simple instance, which is reported as an instance file.

The statements of a run expected to hold share their searches: the examples their searches would
draw while nothing fails are drawn once (:mod:`.search_draws`, kept on disk) and every statement
of the group is evaluated on all of them in one batched program; only when one fails is each
statement searched on its own, so the outcome is the one separate searches would give.
"""

from __future__ import annotations

import functools
from random import Random

import jax
import numpy as np
from hypothesis import find, strategies as st
from hypothesis.errors import NoSuchExample

from ..theory.instance import Instance
from .exported_programs import exported_jit
from .registry import policy_from_logits
from .search_draws import drawn_examples, search_settings
from .statement import Statement, holds_mask
from .stored_programs import program_name
from .strategies import (
  SEARCH_SHAPE,
  instance_strategy,
  is_valid_raw,
  pad_raw,
  probe_strategy_for,
)
from .tree_checks import SEARCHABLE_TREE_STATEMENTS, evaluate_tree_file, evaluate_tree_files
from .tree_strategies import tree_strategy

__all__ = ["search_counterexample", "evaluate_raw", "search_tree_counterexample"]


@functools.lru_cache(maxsize=None)
def _compiled(fn):
  """jit of: padded instance arrays + probe logits -> Verdict (one compile per statement)."""

  def run(w, d, ref, r, beta, mask, theta):
    inst = Instance(prompt_weights=w, data=d, reference=ref, reward=r, beta=beta,
                    response_mask=mask)
    return fn(inst, policy_from_logits(inst, theta))

  name = program_name(fn)
  if name is not None:
    return exported_jit(run, f"{name}[search]")
  return jax.jit(run)


_GROUP_CHUNK = 512  # examples per batched call of a shared search


def evaluate_raw(stmt: Statement, raw: dict, theta=None):
  """Verdict of a statement on one raw instance (+ probe logits), padded to SEARCH_SHAPE."""
  return _compiled(stmt.fn)(*pad_raw(raw, theta))


def _tree_fails(stmt: Statement, example) -> bool:
  v = evaluate_tree_file(stmt.name, *example)
  return v is not None and bool(v.applies) and not bool(
      holds_mask(stmt, np.asarray(v.margin), np.asarray(v.slack)))


def _tree_draws():
  return st.tuples(tree_strategy(), st.integers(0, 2**32 - 1))


def _find_tree(stmts: tuple, max_examples: int, seed: int):
  """Hypothesis' search for a tree (and probe seed) on which one of ``stmts`` fails."""
  return find(_tree_draws(), lambda example: any(_tree_fails(s, example) for s in stmts),
              settings=search_settings(max_examples), random=Random(seed))


@functools.lru_cache(maxsize=8)
def _some_tree_statement_fails(group: tuple, max_examples: int, seed: int) -> bool:
  """Whether one of the tree statements of ``group`` fails on an example their searches draw.

  Each statement's own search (same strategy, settings and seed) draws the same examples while
  nothing fails, whatever the statement (:mod:`.search_draws`); so the examples are drawn once
  (kept on disk) and every exact statement is evaluated on all of them in one batched program
  (:func:`.tree_checks.evaluate_tree_files`). When nothing fails, no statement's own search
  would find anything; otherwise each statement is searched on its own as before."""
  examples = drawn_examples("trees", _tree_draws(), max_examples, seed)
  if not examples:
    return False
  verdicts = evaluate_tree_files(examples)
  for s in group:
    v = verdicts[s.name]
    if np.any(v.applies & ~holds_mask(s, v.margin, v.slack)):
      return True
  return False


def search_tree_counterexample(stmt: Statement, max_examples: int = 200, seed: int = 0,
                               together: tuple = ()) -> dict | None:
  """Searches for a (shrunk) tree on which a token-level statement (G1–G4) fails.

  Draws small tree files from :func:`.tree_strategies.tree_strategy` (every reward rule, both
  reference forms) and a probe seed; every exact tree statement is evaluated at once per example
  (:func:`.tree_checks.evaluate_tree_file`, one compile for all). Flow statements are not searched
  (None). The searchable statements of ``together`` (the run's) are first evaluated together on
  the examples their searches draw (:func:`_some_tree_statement_fails`); ``stmt`` is searched on
  its own only when one of them fails.

  Returns:
    None when nothing was found, else {"tree": tree-file object, "probe_seed", "lhs", "rhs",
    "margin", "slack"}.
  """
  if stmt.name not in SEARCHABLE_TREE_STATEMENTS:
    return None
  group = tuple(s for s in together if s.name in SEARCHABLE_TREE_STATEMENTS)
  if stmt in group and not _some_tree_statement_fails(group, max_examples, seed):
    return None
  try:
    raw, probe_seed = _find_tree((stmt,), max_examples, seed)
  except NoSuchExample:
    return None
  v = evaluate_tree_file(stmt.name, raw, probe_seed)
  return {"tree": raw, "probe_seed": int(probe_seed), "lhs": float(v.lhs), "rhs": float(v.rhs),
          "margin": float(v.margin), "slack": float(v.slack)}


def _fails(stmt: Statement, raw: dict, theta) -> bool:
  v = evaluate_raw(stmt, raw, theta)
  return bool(v.applies) and not bool(holds_mask(stmt, np.asarray(v.margin), np.asarray(v.slack)))


def _instance_draws(uses_probe: bool, strategy=None):
  base = strategy if strategy is not None else instance_strategy(*SEARCH_SHAPE)
  if uses_probe:
    return base.flatmap(lambda raw: st.tuples(st.just(raw), probe_strategy_for(raw)))
  return base.map(lambda raw: (raw, None))


def _find_instance(stmts: tuple, uses_probe: bool, max_examples: int, seed: int, strategy=None):
  """Hypothesis' search for an instance (and probe logits) on which one of ``stmts`` fails."""

  def fails(example) -> bool:
    raw, theta = example
    return is_valid_raw(raw) and any(_fails(s, raw, theta) for s in stmts)

  return find(_instance_draws(uses_probe, strategy), fails,
              settings=search_settings(max_examples), random=Random(seed))


@functools.lru_cache(maxsize=None)
def _compiled_group(fns: tuple):
  """jit of: a batch of padded instances + probe logits -> one Verdict [N] per statement."""

  def run(w, d, ref, r, beta, mask, theta):
    inst = Instance(prompt_weights=w, data=d, reference=ref, reward=r, beta=beta,
                    response_mask=mask)
    policy = policy_from_logits(inst, theta)
    return tuple(fn(inst, policy) for fn in fns)

  names = tuple(program_name(fn) for fn in fns)
  if None in names:
    return jax.jit(jax.vmap(run))
  return exported_jit(jax.vmap(run), f"search group {names}")


def _group_fails(stmts: tuple, examples: list) -> bool:
  """Whether a statement of ``stmts`` fails on one of the valid ``examples`` (raw, θ), each
  padded to SEARCH_SHAPE as :func:`evaluate_raw` pads it, in batches of at most
  ``_GROUP_CHUNK`` (repeated to a power of two: one program per size)."""
  rows = [pad_raw(raw, theta) for raw, theta in examples if is_valid_raw(raw)]
  program = _compiled_group(tuple(s.fn for s in stmts))
  for lo in range(0, len(rows), _GROUP_CHUNK):
    cols = [np.stack(c) for c in zip(*rows[lo:lo + _GROUP_CHUNK])]
    n = len(cols[0])
    take = np.arange(1 << (n - 1).bit_length()) % n
    for s, v in zip(stmts, program(*(c[take] for c in cols))):
      applies = np.broadcast_to(np.asarray(v.applies, bool), take.shape)[:n]
      if np.any(applies & ~holds_mask(s, np.asarray(v.margin)[:n], np.asarray(v.slack)[:n])):
        return True
  return False


@functools.lru_cache(maxsize=16)
def _some_statement_fails(group: tuple, uses_probe: bool, max_examples: int, seed: int) -> bool:
  """Whether a statement of ``group`` fails on an example their searches draw (as
  :func:`_some_tree_statement_fails`: drawn once, evaluated in one batched program)."""
  kind = f"instances {SEARCH_SHAPE}, probe={uses_probe}"
  return _group_fails(group, drawn_examples(kind, _instance_draws(uses_probe), max_examples, seed))


def search_counterexample(stmt: Statement, max_examples: int = 200, seed: int = 0,
                          strategy=None, together: tuple = ()) -> dict | None:
  """Searches for a (shrunk) counterexample to ``stmt``.

  The statements of ``together`` (the run's) that are expected to hold and draw as ``stmt`` does
  (with or without a probe) are first evaluated together on the examples their own searches
  (same strategy, settings and seed) draw while nothing fails (:func:`_some_statement_fails`):
  when none fails on any, no statement's own search would find anything; otherwise, and for
  every other statement, ``stmt`` is searched on its own.

  Args:
    stmt: a statement with an unbatched ``fn``.
    max_examples: Hypothesis example budget (shrinking comes on top).
    seed: seed of the search (deterministic).
    strategy: strategy of raw instances (default: :func:`instance_strategy`; with another, no
      shared search).
    together: the statements of the run (default: none, ``stmt`` is searched on its own).

  Returns:
    None when nothing was found, else {"instance": raw dict, "probe_logits": array or None,
    "lhs", "rhs", "margin", "slack"}.
  """
  group = tuple(s for s in together if s.fn is not None and s.expected == "holds"
                and s.uses_probe == stmt.uses_probe)
  if (strategy is None and stmt in group
      and not _some_statement_fails(group, stmt.uses_probe, max_examples, seed)):
    return None
  try:
    raw, theta = _find_instance((stmt,), stmt.uses_probe, max_examples, seed, strategy)
  except NoSuchExample:
    return None
  v = evaluate_raw(stmt, raw, theta)
  return {"instance": raw, "probe_logits": theta, "lhs": float(v.lhs), "rhs": float(v.rhs),
          "margin": float(v.margin), "slack": float(v.slack)}

"""Counterexample search with Hypothesis: find (and shrink) an instance where a statement fails.

The search draws small instances (at most ``SEARCH_SHAPE``) from
:func:`.strategies.instance_strategy`, pads them to ``SEARCH_SHAPE`` so the statement compiles
once, and asks Hypothesis for an example on which the statement applies and fails. Hypothesis
shrinks what it finds to a simple instance, which is reported as an instance file.
"""

from __future__ import annotations

import functools
import os
from random import Random

import jax
import numpy as np
from hypothesis import HealthCheck, Phase, find, settings, strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import NoSuchExample

from ..theory.instance import Instance
from .compile_cache import default_cache_dir
from .exported_programs import exported_jit
from .registry import policy_from_logits
from .statement import Statement, holds_mask
from .stored_programs import program_name
from .strategies import (
  SEARCH_SHAPE,
  instance_strategy,
  is_valid_raw,
  pad_raw,
  probe_strategy_for,
)
from .tree_checks import SEARCHABLE_TREE_STATEMENTS, evaluate_tree_file
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


def evaluate_raw(stmt: Statement, raw: dict, theta=None):
  """Verdict of a statement on one raw instance (+ probe logits), padded to SEARCH_SHAPE."""
  return _compiled(stmt.fn)(*pad_raw(raw, theta))


def _keep_hypothesis_files_in_the_cache() -> None:
  """Hypothesis keeps files (e.g. constants read from source) under ``./.hypothesis`` by default:
  a command must not write into the user's working directory, so they go to the cache directory
  (unless ``HYPOTHESIS_STORAGE_DIRECTORY`` says otherwise)."""
  if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(default_cache_dir() / "hypothesis")


def _settings(max_examples: int):
  _keep_hypothesis_files_in_the_cache()
  return settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])


def _tree_fails(stmt: Statement, example) -> bool:
  v = evaluate_tree_file(stmt.name, *example)
  return v is not None and bool(v.applies) and not bool(
      holds_mask(stmt, np.asarray(v.margin), np.asarray(v.slack)))


def _find_tree(stmts: tuple, max_examples: int, seed: int):
  """Hypothesis' search for a tree (and probe seed) on which one of ``stmts`` fails."""
  drawn = st.tuples(tree_strategy(), st.integers(0, 2**32 - 1))
  return find(drawn, lambda example: any(_tree_fails(s, example) for s in stmts),
              settings=_settings(max_examples), random=Random(seed))


@functools.lru_cache(maxsize=8)
def _some_tree_statement_fails(group: tuple, max_examples: int, seed: int) -> bool:
  """One search for the tree statements of ``group`` at once (same strategy, settings and seed as
  each statement's own search). While nothing fails, Hypothesis draws the same examples whatever
  the statement, so when this search finds nothing neither would any statement's own search:
  the statements share one search instead of repeating it (its drawing was most of `verify`'s
  search time). When it finds something, each statement is searched on its own as before."""
  try:
    _find_tree(group, max_examples, seed)
  except NoSuchExample:
    return False
  return True


def search_tree_counterexample(stmt: Statement, max_examples: int = 200, seed: int = 0,
                               together: tuple = ()) -> dict | None:
  """Searches for a (shrunk) tree on which a token-level statement (G1–G4) fails.

  Draws small tree files from :func:`.tree_strategies.tree_strategy` (every reward rule, both
  reference forms) and a probe seed; every exact tree statement is evaluated at once per example
  (:func:`.tree_checks.evaluate_tree_file`, one compile for all). Flow statements are not searched
  (None). The searchable statements of ``together`` (the run's) first share one search
  (:func:`_some_tree_statement_fails`); ``stmt`` is searched on its own only when that finds
  something.

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


def _find_instance(stmts: tuple, uses_probe: bool, max_examples: int, seed: int, strategy=None):
  """Hypothesis' search for an instance (and probe logits) on which one of ``stmts`` fails."""
  base = strategy if strategy is not None else instance_strategy(*SEARCH_SHAPE)
  if uses_probe:
    drawn = base.flatmap(lambda raw: st.tuples(st.just(raw), probe_strategy_for(raw)))
  else:
    drawn = base.map(lambda raw: (raw, None))

  def fails(example) -> bool:
    raw, theta = example
    return is_valid_raw(raw) and any(_fails(s, raw, theta) for s in stmts)

  return find(drawn, fails, settings=_settings(max_examples), random=Random(seed))


@functools.lru_cache(maxsize=16)
def _some_statement_fails(group: tuple, uses_probe: bool, max_examples: int, seed: int) -> bool:
  """One search for the statements of ``group`` at once (as :func:`_some_tree_statement_fails`)."""
  try:
    _find_instance(group, uses_probe, max_examples, seed)
  except NoSuchExample:
    return False
  return True


def search_counterexample(stmt: Statement, max_examples: int = 200, seed: int = 0,
                          strategy=None, together: tuple = ()) -> dict | None:
  """Searches for a (shrunk) counterexample to ``stmt``.

  The statements of ``together`` (the run's) that are expected to hold and draw as ``stmt`` does
  (with or without a probe) are first searched together, in one search with the same strategy,
  settings and seed as each one's own: while nothing fails Hypothesis draws the same examples
  whatever the statement, so when that search finds nothing, neither would this one's; otherwise,
  and for every other statement, ``stmt`` is searched on its own.

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

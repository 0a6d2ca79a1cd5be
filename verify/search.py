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
from .registry import policy_from_logits
from .statement import Statement, holds_mask
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


def search_tree_counterexample(stmt: Statement, max_examples: int = 200,
                               seed: int = 0) -> dict | None:
  """Searches for a (shrunk) tree on which a token-level statement (G1–G4) fails.

  Draws small tree files from :func:`.tree_strategies.tree_strategy` (every reward rule, both
  reference forms) and a probe seed; every exact tree statement is evaluated at once per example
  (:func:`.tree_checks.evaluate_tree_file`, one compile for all). Flow statements are not searched
  (None).

  Returns:
    None when nothing was found, else {"tree": tree-file object, "probe_seed", "lhs", "rhs",
    "margin", "slack"}.
  """
  drawn = st.tuples(tree_strategy(), st.integers(0, 2**32 - 1))

  def fails(example) -> bool:
    v = evaluate_tree_file(stmt.name, *example)
    return v is not None and bool(v.applies) and not bool(
        holds_mask(stmt, np.asarray(v.margin), np.asarray(v.slack)))

  if stmt.name not in SEARCHABLE_TREE_STATEMENTS:
    return None
  try:
    raw, probe_seed = find(drawn, fails, settings=_settings(max_examples), random=Random(seed))
  except NoSuchExample:
    return None
  v = evaluate_tree_file(stmt.name, raw, probe_seed)
  return {"tree": raw, "probe_seed": int(probe_seed), "lhs": float(v.lhs), "rhs": float(v.rhs),
          "margin": float(v.margin), "slack": float(v.slack)}


def search_counterexample(stmt: Statement, max_examples: int = 200, seed: int = 0,
                          strategy=None) -> dict | None:
  """Searches for a (shrunk) counterexample to ``stmt``.

  Args:
    stmt: a statement with an unbatched ``fn``.
    max_examples: Hypothesis example budget (shrinking comes on top).
    seed: seed of the search (deterministic).
    strategy: strategy of raw instances (default: :func:`instance_strategy`).

  Returns:
    None when nothing was found, else {"instance": raw dict, "probe_logits": array or None,
    "lhs", "rhs", "margin", "slack"}.
  """
  base = strategy if strategy is not None else instance_strategy(*SEARCH_SHAPE)
  if stmt.uses_probe:
    drawn = base.flatmap(lambda raw: st.tuples(st.just(raw), probe_strategy_for(raw)))
  else:
    drawn = base.map(lambda raw: (raw, None))

  def fails(example) -> bool:
    raw, theta = example
    if not is_valid_raw(raw):
      return False
    v = evaluate_raw(stmt, raw, theta)
    return bool(v.applies) and not bool(holds_mask(stmt, np.asarray(v.margin), np.asarray(v.slack)))

  try:
    raw, theta = find(drawn, fails, settings=_settings(max_examples), random=Random(seed))
  except NoSuchExample:
    return None
  v = evaluate_raw(stmt, raw, theta)
  return {"instance": raw, "probe_logits": theta, "lhs": float(v.lhs), "rhs": float(v.rhs),
          "margin": float(v.margin), "slack": float(v.slack)}

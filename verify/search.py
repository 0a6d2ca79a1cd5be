"""Counterexample search with Hypothesis: find (and shrink) an instance where a statement fails.

The search draws small instances (at most ``SEARCH_SHAPE``) from
:func:`verify.families.instance_strategy`, pads them to ``SEARCH_SHAPE`` so the statement compiles
once, and asks Hypothesis for an example on which the statement applies and fails. Hypothesis
shrinks what it finds to a simple instance, which is reported as an instance file.
"""

from __future__ import annotations

import functools
from random import Random

import jax
import numpy as np
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from theory.instance import Instance
from verify.families import instance_strategy, probe_strategy_for
from verify.statements import Statement, holds_mask, policy_from_logits

__all__ = ["SEARCH_SHAPE", "search_counterexample", "evaluate_raw"]

SEARCH_SHAPE = (3, 4)


def _valid(raw: dict) -> bool:
  """The instance rules (as theory.instance.validate), in numpy for speed."""
  d, ref, w = (np.asarray(raw[k], np.float64) for k in ("data", "reference", "prompt_weights"))
  return bool(np.all(np.isfinite(d)) and np.all(np.abs(d.sum(1) - 1) < 1e-9)
              and np.all(np.abs(ref.sum(1) - 1) < 1e-9) and abs(w.sum() - 1) < 1e-9
              and np.all(w > 0) and not np.any((d > 0) & (ref <= 0)) and raw["beta"] > 0)


@functools.lru_cache(maxsize=None)
def _compiled(fn):
  """jit of: padded instance arrays + probe logits -> Verdict (one compile per statement)."""

  def run(w, d, ref, r, beta, mask, theta):
    inst = Instance(prompt_weights=w, data=d, reference=ref, reward=r, beta=beta,
                    response_mask=mask)
    return fn(inst, policy_from_logits(inst, theta))

  return jax.jit(run)


def pad_raw(raw: dict, theta=None, shape=SEARCH_SHAPE) -> tuple:
  """Pads a raw instance in numpy, as theory.instance.pad_instance does (but without dispatch).

  Returns:
    (w, data, reference, reward, beta, mask, theta) numpy arrays of the padded shape.
  """
  d = np.asarray(raw["data"], np.float64)
  nx, ny = d.shape
  px, py = shape
  out_d, out_ref, out_r = np.zeros((px, py)), np.zeros((px, py)), np.zeros((px, py))
  out_d[:, :ny] = 1.0 / ny
  out_ref[:, :ny] = 1.0 / ny
  out_d[:nx, :ny] = d
  out_d[:nx, ny:] = 0.0
  ref = raw.get("reference")
  out_ref[:nx, :ny] = d if ref is None else np.asarray(ref, np.float64)
  out_r[:nx, :ny] = np.asarray(raw["reward"], np.float64)
  w = np.zeros(px)
  w[:nx] = np.asarray(raw["prompt_weights"], np.float64)
  mask = np.zeros((px, py), bool)
  mask[:, :ny] = True
  th = np.zeros((px, py))
  if theta is not None:
    th[:nx, :ny] = np.asarray(theta, np.float64)
  return w, out_d, out_ref, out_r, np.float64(raw["beta"]), mask, th


def evaluate_raw(stmt: Statement, raw: dict, theta=None):
  """Verdict of a statement on one raw instance (+ probe logits), padded to SEARCH_SHAPE."""
  return _compiled(stmt.fn)(*pad_raw(raw, theta))


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
    "lhs", "rhs", "margin"}.
  """
  base = strategy if strategy is not None else instance_strategy(*SEARCH_SHAPE)
  if stmt.uses_probe:
    drawn = base.flatmap(lambda raw: st.tuples(st.just(raw), probe_strategy_for(raw)))
  else:
    drawn = base.map(lambda raw: (raw, None))

  def fails(example) -> bool:
    raw, theta = example
    if not _valid(raw):
      return False
    v = evaluate_raw(stmt, raw, theta)
    return bool(v.applies) and not bool(holds_mask(stmt, np.asarray(v.margin)))

  config = settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate, Phase.shrink])
  try:
    raw, theta = find(drawn, fails, settings=config, random=Random(seed))
  except NoSuchExample:
    return None
  v = evaluate_raw(stmt, raw, theta)
  return {"instance": raw, "probe_logits": theta, "lhs": float(v.lhs), "rhs": float(v.rhs),
          "margin": float(v.margin)}

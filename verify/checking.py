"""The `verify` job: sweep every statement over random families, search with Hypothesis, report.

The outcome of a statement is *as expected* when

- expected ``holds``: it held on every applicable instance of the sweep and the search found no
  counterexample;
- expected ``refuted``: a counterexample was found by the search (or, failing that, by the sweep).
  Nothing is ever written into the code: the instance reported is the one found.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from ..theory.instance import index, unpad_instance
from ..theory.objectives import safe_log
from ..theory.verdict import Verdict
from .families import BUCKET, sample_all
from .io import instance_to_dict
from .registry import STATEMENTS, all_statements
from .search import search_counterexample
from .statement import Statement, holds_mask
from .sweep import evaluate_batch

__all__ = ["StatementReport", "check_statement", "run_verify", "instance_margins"]


@dataclasses.dataclass
class StatementReport:
  name: str
  title: str
  source: str
  expected: str
  holds: bool
  instances: int
  checked: int
  failures: int
  worst_margin: float | None
  tightness: float | None
  search_examples: int
  search_found: bool
  counterexample: dict | None
  counterexample_source: str | None
  seconds: float

  @property
  def as_expected(self) -> bool:
    if self.expected == "holds":
      return self.holds
    return self.counterexample is not None

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["as_expected"] = self.as_expected
    return out


def _tightness(ratio: np.ndarray, ok: np.ndarray) -> float | None:
  """max over instances of the bound's used fraction (1 = the bound is attained)."""
  good = ok & np.isfinite(ratio)
  return float(np.max(ratio[good])) if good.any() else None


def _raw_from_instance(inst) -> dict:
  return instance_to_dict(unpad_instance(inst))


def _counterexample_from_search(found: dict) -> dict:
  raw = found["instance"]
  obj = {k: np.asarray(v).tolist() if k != "beta" else float(v) for k, v in raw.items()}
  out = {"instance": obj, "lhs": found["lhs"], "rhs": found["rhs"], "margin": found["margin"]}
  if found.get("probe_logits") is not None:
    out["probe_logits"] = np.asarray(found["probe_logits"]).tolist()
  return out


def check_statement(stmt: Statement, batches, search_examples: int, seed: int) -> StatementReport:
  """Sweeps one statement over the batches and searches for a counterexample."""
  t0 = time.perf_counter()
  margins, lhs_all, rhs_all, applies_all, ratio_all = [], [], [], [], []
  first_failure = None
  for fam, inst, probe in batches:
    if stmt.check is not None:
      out = stmt.check(inst, jax.random.PRNGKey(seed))
      if not hasattr(out, "margin"):
        m = np.asarray(out)
        out = Verdict(m, np.zeros_like(m), m, np.ones_like(m, bool), np.full_like(m, np.nan))
    else:
      out = evaluate_batch(stmt.fn, inst, probe)
    m, a = np.asarray(out.margin, np.float64), np.asarray(out.applies, bool)
    a = np.broadcast_to(a, m.shape)
    bad = a & ~holds_mask(stmt, m)
    if first_failure is None and bad.any():
      i = int(np.argmax(bad))
      first_failure = (fam, index(inst, i), index(probe, i), float(m[i]), float(
          np.asarray(out.lhs)[i]), float(np.asarray(out.rhs)[i]))
    margins.append(m)
    applies_all.append(a)
    lhs_all.append(np.broadcast_to(np.asarray(out.lhs, np.float64), m.shape))
    rhs_all.append(np.broadcast_to(np.asarray(out.rhs, np.float64), m.shape))
    ratio_all.append(np.broadcast_to(np.asarray(out.ratio, np.float64), m.shape))
  m, a = np.concatenate(margins), np.concatenate(applies_all)
  ratio = np.concatenate(ratio_all)
  ok = holds_mask(stmt, m)
  failures = int(np.sum(a & ~ok))
  worst = float(np.nanmin(np.where(a, m, np.inf))) if a.any() else None
  if worst is not None and not np.isfinite(worst):
    worst = None if worst == np.inf else worst
  tight = _tightness(ratio, a & ok) if stmt.kind == "bound" else None

  found = None
  if stmt.fn is not None and search_examples > 0:
    found = search_counterexample(stmt, max_examples=search_examples, seed=seed)
  counterexample, cx_source = None, None
  if found is not None:
    counterexample, cx_source = _counterexample_from_search(found), "hypothesis"
  elif first_failure is not None:
    fam, inst_i, probe_i, mi, li, ri = first_failure
    counterexample = {"instance": _raw_from_instance(inst_i), "lhs": li, "rhs": ri, "margin": mi,
                      "family": fam}
    if stmt.uses_probe:
      counterexample["probe_log_policy"] = np.asarray(probe_i).tolist()
    cx_source = "sweep"
  return StatementReport(
      name=stmt.name, title=stmt.title, source=stmt.source, expected=stmt.expected,
      holds=failures == 0 and found is None, instances=int(a.sum()), checked=int(a.size),
      failures=failures, worst_margin=worst, tightness=tight,
      search_examples=search_examples if stmt.fn is not None else 0,
      search_found=found is not None, counterexample=counterexample,
      counterexample_source=cx_source, seconds=time.perf_counter() - t0)


def run_verify(n_instances: int, seed: int, search_examples: int,
               statements: tuple[Statement, ...] | None = None,
               progress: Callable[[str], None] | None = None) -> dict:
  """Runs the whole job and returns the report object (written as report.json)."""
  t0 = time.perf_counter()
  statements = all_statements() if statements is None else statements
  batches = sample_all(n_instances, seed)
  reports = []
  for stmt in statements:
    if progress:
      progress(stmt.name)
    reports.append(check_statement(stmt, batches, search_examples, seed))
  return {
      "tool": "nondecoupling verify",
      "seed": seed,
      "instances_per_statement": n_instances,
      "families": [b[0] for b in batches],
      "bucket": list(BUCKET),
      "devices": jax.device_count(),
      "search_examples": search_examples,
      "seconds": time.perf_counter() - t0,
      "all_as_expected": all(r.as_expected for r in reports),
      "statements": [r.to_json() for r in reports],
  }


def _all_verdicts(inst):
  probe = safe_log(inst.data)
  return [s.fn(inst, probe) for s in STATEMENTS]


def instance_margins(inst) -> dict:
  """{statement name: {"lhs", "rhs", "margin", "applies", "holds"}} at probe π = d."""
  verdicts = jax.jit(_all_verdicts)(inst)
  out = {}
  for s, v in zip(STATEMENTS, verdicts):
    m = float(v.margin)
    applies = bool(v.applies)
    out[s.name] = {"lhs": float(v.lhs), "rhs": float(v.rhs), "margin": m, "applies": applies,
                   "holds": bool(holds_mask(s, np.asarray(m))) if applies else None,
                   "source": s.source, "expected": s.expected}
  return out

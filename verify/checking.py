"""The `verify` job: sweep every statement over random families, search with Hypothesis, report.

The outcome of a statement is *as expected* when

- expected ``holds``: it held on every applicable instance of the sweep and the search found no
  counterexample;
- expected ``refuted``: a counterexample was found by the search (or, failing that, by the sweep).
  Nothing is ever written into the code: the instance reported is the one found.

An instance counts as a failure when its margin is below minus its rounding slack (see
:mod:`.statement`) or is not a number (NaN): a NaN where a margin is expected is reported, with a
message, never dropped. The report gives the worst margin and the worst margin in units of its
slack (below −1 is a failure beyond rounding).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from ..theory.instance import index, unpad_instance
from .families import BUCKET, sample_all
from .io import instance_to_dict
from .registry import all_statements
from .search import search_counterexample, search_tree_counterexample
from .statement import Statement, failure_mask, holds_mask
from .sweep import evaluate_batch, pad_leading
from .tree_checks import TREE_NAMES
from .tree_export import tree_instance_to_dict
from .tree_group_checks import TREE_GROUP_STATEMENTS

__all__ = ["StatementReport", "check_statement", "run_verify"]


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
  worst_margin_in_slacks: float | None
  nonfinite: int
  message: str | None
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


# Statements checked on random trees (reported by family, index and seed, not by instance).
_TOKEN_LEVEL = TREE_NAMES | frozenset(s.name for s in TREE_GROUP_STATEMENTS)

def _tightness(ratio: np.ndarray, ok: np.ndarray) -> float | None:
  """max over instances of the bound's used fraction (1 = the bound is attained)."""
  good = ok & np.isfinite(ratio)
  return float(np.max(ratio[good])) if good.any() else None


def _raw_from_instance(inst) -> dict:
  return instance_to_dict(unpad_instance(inst))


def _counterexample_from_search(found: dict) -> dict:
  raw = found["instance"]
  obj = {k: np.asarray(v).tolist() if k != "beta" else float(v) for k, v in raw.items()}
  out = {"instance": obj, "lhs": found["lhs"], "rhs": found["rhs"], "margin": found["margin"],
         "slack": found["slack"]}
  if found.get("probe_logits") is not None:
    out["probe_logits"] = np.asarray(found["probe_logits"]).tolist()
  return out


def _worst_in_slacks(m: np.ndarray, slack: np.ndarray, a: np.ndarray) -> float | None:
  """min of margin / slack over applicable instances with a positive slack and finite margin."""
  good = a & np.isfinite(m) & (slack > 0)
  return float(np.min(m[good] / slack[good])) if good.any() else None


def _message(stmt: Statement, m: np.ndarray, a: np.ndarray, families: np.ndarray) -> str | None:
  """A line naming the non-finite margins on applicable instances (NaN ones count as failures)."""
  bad = a & ~np.isfinite(m)
  if not bad.any():
    return None
  kinds = ", ".join(f"{int(np.sum(bad & k))} {name}" for name, k in
                    (("NaN", np.isnan(m)), ("+inf", m == np.inf), ("-inf", m == -np.inf))
                    if np.any(bad & k))
  first = int(np.argmax(bad))
  return (f"{stmt.name}: non-finite margin on {int(bad.sum())} applicable instance(s) ({kinds}); "
          f"first in family {families[first]}, margin {m[first]}")


_PADDED: list = []  # [(batch, size, padded batch)]: one padded object per batch, so that the
                    # statements sharing a run per batch (D7's two) find it by identity


def _padded(inst, size: int):
  """``inst`` padded to ``size`` instances by repeating its last (the rows' own random keys are
  unchanged: ``jax.random.split(key, n)`` is a prefix of ``split(key, size)``)."""
  if int(np.asarray(inst.prompt_weights).shape[0]) == size:
    return inst
  for b, s, out in _PADDED:
    if b is inst and s == size:
      return out
  out = jax.tree.map(lambda a: pad_leading(np.asarray(a), size), inst)
  _PADDED[:] = _PADDED[-15:] + [(inst, size, out)]
  return out


def check_statement(stmt: Statement, batches, search_examples: int, seed: int,
                    together: tuple = ()) -> StatementReport:
  """Sweeps one statement over the batches and searches for a counterexample (sharing the search
  with the statements of ``together``, the run's, where it can: :mod:`.search`)."""
  t0 = time.perf_counter()
  margins, slacks, lhs_all, rhs_all, applies_all, ratio_all, fams = [], [], [], [], [], [], []
  first_failure = None
  size = max(int(np.asarray(b[1].prompt_weights).shape[0]) for b in batches)  # one shape
  for fam, inst, probe in batches:
    if stmt.check is not None and stmt.name in _TOKEN_LEVEL:
      out = stmt.check(inst, jax.random.PRNGKey(seed))  # trees drawn from the batch itself
    elif stmt.check is not None:  # one shape for every family's batch (one program, not three)
      n = int(np.asarray(inst.prompt_weights).shape[0])
      out = stmt.check(_padded(inst, size), jax.random.PRNGKey(seed))
      out = type(out)(*(np.asarray(f)[:n] if np.ndim(f) else f for f in out))
    else:
      out = evaluate_batch(stmt.fn, inst, probe, size=size)
    m = np.asarray(out.margin, np.float64)
    a = np.broadcast_to(np.asarray(out.applies, bool), m.shape)
    sl = np.broadcast_to(np.asarray(out.slack, np.float64), m.shape)
    bad = a & failure_mask(stmt, m, sl)
    if first_failure is None and bad.any() and stmt.instances is not None:
      i = int(np.argmax(bad))  # the i-th of the instances the check evaluated (random trees)
      trees, probes = stmt.instances(inst, jax.random.PRNGKey(seed))
      first_failure = (fam, index(trees, i), (i, index(probes, i)), float(m[i]),
                       float(np.asarray(out.lhs)[i]), float(np.asarray(out.rhs)[i]), float(sl[i]))
    if first_failure is None and bad.any():
      i = int(np.argmax(bad))
      first_failure = (fam, index(inst, i), index(probe, i), float(m[i]), float(
          np.asarray(out.lhs)[i]), float(np.asarray(out.rhs)[i]), float(sl[i]))
    margins.append(m)
    slacks.append(sl)
    applies_all.append(a)
    fams.append(np.full(m.shape, fam, dtype=object))
    lhs_all.append(np.broadcast_to(np.asarray(out.lhs, np.float64), m.shape))
    rhs_all.append(np.broadcast_to(np.asarray(out.rhs, np.float64), m.shape))
    ratio_all.append(np.broadcast_to(np.asarray(out.ratio, np.float64), m.shape))
  m, a, sl = np.concatenate(margins), np.concatenate(applies_all), np.concatenate(slacks)
  ratio = np.concatenate(ratio_all)
  ok = holds_mask(stmt, m, sl)
  failures = int(np.sum(a & ~ok))
  finite = a & np.isfinite(m)
  worst = float(np.min(m[finite])) if finite.any() else None
  tight = _tightness(ratio, a & ok) if stmt.kind == "bound" else None

  found = None
  tree = stmt.name in _TOKEN_LEVEL
  if stmt.fn is not None and search_examples > 0:
    found = search_counterexample(stmt, max_examples=search_examples, seed=seed,
                                  together=together)
  elif tree and search_examples > 0:
    found = search_tree_counterexample(stmt, max_examples=search_examples, seed=seed,
                                       together=together)
  counterexample, cx_source = None, None
  if found is not None and tree:
    counterexample, cx_source = dict(found), "hypothesis"
  elif found is not None:
    counterexample, cx_source = _counterexample_from_search(found), "hypothesis"
  elif first_failure is not None and stmt.instances is not None:
    fam, tree_i, (i, probe_i), mi, li, ri, si = first_failure
    counterexample = {"tree": tree_instance_to_dict(tree_i),
                      "random_tree": {"batch": fam, "index": i, "seed": seed}, "lhs": li,
                      "rhs": ri, "margin": mi, "slack": si}
    if stmt.uses_probe:
      counterexample["probe_logits"] = [np.asarray(t).tolist() for t in probe_i]
    cx_source = "sweep"
  elif first_failure is not None:
    fam, inst_i, probe_i, mi, li, ri, si = first_failure
    counterexample = {"instance": _raw_from_instance(inst_i), "lhs": li, "rhs": ri, "margin": mi,
                      "slack": si, "family": fam}
    if stmt.uses_probe:
      counterexample["probe_log_policy"] = np.asarray(probe_i).tolist()
    cx_source = "sweep"
  return StatementReport(
      name=stmt.name, title=stmt.title, source=stmt.source, expected=stmt.expected,
      holds=failures == 0 and found is None, instances=int(a.sum()), checked=int(a.size),
      failures=failures, worst_margin=worst, worst_margin_in_slacks=_worst_in_slacks(m, sl, a),
      nonfinite=int(np.sum(a & ~np.isfinite(m))),
      message=_message(stmt, m, a, np.concatenate(fams)), tightness=tight,
      search_examples=search_examples if stmt.fn is not None or tree else 0,
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
    reports.append(check_statement(stmt, batches, search_examples, seed, tuple(statements)))
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

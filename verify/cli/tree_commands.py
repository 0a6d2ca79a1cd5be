"""`check`, `frontier`, `compare` and `flow` on a tree file (token level, THEORY.md part G).

The commands' modules (:mod:`.check`, :mod:`.dynamics`) read the file with
:func:`.limits.load_input` and hand a :class:`~..tree_io.TreeFile` here. Output mirrors the
atomic commands: tables on the console, or one JSON object with the same ``provenance``.
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
from rich.table import Table

from ...theory.objectives import sft_optimum_loss
from ...theory.recipes import InfeasibleExactField
from ...theory.tree.atomic import leaf_instance
from ...theory.tree.recipes.constructs import KL_CONSTRUCT_RECIPES
from ...theory.tree.recipes.registry import TREE_RECIPES
from ...theory.tree.recipes.train import tree_recipe_path
from ..compare import SAMPLED_GROUPS
from ..errors import InputError
from ..provenance import provenance
from ..tree_compare import (
  ROW_VALUES,
  path_values,
  time_unit,
  tree_compare_rows,
  tree_recipe_configs,
)
from ..tree_quantities import TREE_QUANTITY_DOCS, tree_margins, tree_quantities, tree_shape
from .console import cell, console, escape, print_json

__all__ = ["run_tree_check", "run_tree_frontier", "run_tree_compare", "run_tree_flow",
           "FRONTIER_NOTE"]

FRONTIER_NOTE = ("every distribution over a tree's leaves is an autoregressive policy (its "
                 "per-node conditionals), so this is the frontier over token-level policies")


def _title(path: str, shape: dict) -> str:
  return (f"{path}: tree, |X| = {shape['prompts']}, k = {shape['vocab']}, T = "
          f"{shape['max_length']}, {shape['nodes']} nodes, {shape['leaves']} leaves, "
          f"β = {shape['beta']:g}")


def _notice(line: str) -> None:
  console(stderr=True).print(f"notice: {escape(line)}")


def run_tree_check(args, tf) -> int:
  q, fixed = tree_quantities(tf.tree)
  bad = [f"{k} is {v}" for k, v in q.items() if not math.isfinite(v)]
  if bad:
    print(f"error: {args.file}: {bad[0]}, expected a finite number inside the valid domain (a "
          "bug: please report the tree)", file=sys.stderr)
    return 1
  margins = tree_margins(tf.tree)
  shape = tree_shape(tf.tree)
  if args.json:
    print_json({**q, "fixed_points": fixed, "instance": {"kind": "tree", **shape},
                "statements": {k: {f: (str(v) if isinstance(v, float) and not math.isfinite(v)
                                       else v) for f, v in m.items()}
                               for k, m in margins.items()},
                "provenance": provenance()}, indent=2)
    return 0
  out = console()
  t = Table(title=escape(_title(args.file, shape)))
  for col in ("quantity", "value", "meaning"):
    t.add_column(col, justify="right" if col == "value" else "left")
  for k, v in q.items():
    t.add_row(escape(k), cell(v, ".10g"), escape(TREE_QUANTITY_DOCS[k]))
  out.print(t)
  t = Table(title="fixed points of the KL constructs (G4; regret: this project's D4 on the leaves)")
  cols = ("sft_loss", "reward", "regularized_reward", "regret", "kl_to_optimum",
          "expected_length")
  t.add_column("construct")
  for c in cols:
    t.add_column(c, justify="right")
  for name, row in fixed.items():
    t.add_row(escape(name), *[cell(row[c]) for c in cols])
  out.print(t)
  t = Table(title="statements G1-G4 (this project's), policy statements at seeded N(0, 1) probe "
                  "logits (holds: margin ≥ −slack)")
  for col in ("statement", "lhs", "rhs", "margin", "slack", "result"):
    t.add_column(col, justify="right" if col in ("lhs", "rhs", "margin", "slack") else "left")
  for name, m in margins.items():
    result = ("n/a (hypothesis not met)" if not m["applies"] else
              "[green]holds[/]" if m["holds"] else "[bold red]fails[/] " +
              escape(m.get("message", "")))
    t.add_row(escape(name), f"{m['lhs']:.6g}", f"{m['rhs']:.6g}", f"{m['margin']:.3g}",
              f"{m['slack']:.2g}", result)
  out.print(t)
  return 0


def run_tree_frontier(args, tf, lambdas, points_of) -> int:
  inst = leaf_instance(tf.tree)
  points = points_of(inst, lambdas)
  if args.json:
    print_json({"points": points, "note": FRONTIER_NOTE, "provenance": provenance()}, indent=2)
    return 0
  table = Table(title=escape(f"Exact SFT-reward frontier of the leaf set of {args.file} (this "
                             "project's D4)"))
  for col in ("λ", "SFT loss L", "L − L(d)", "reward J"):
    table.add_column(col, justify="right")
  l_d = float(sft_optimum_loss(inst))
  for p in points:
    table.add_row(f"{p['lambda']:.6g}", f"{p['sft_loss']:.8f}", f"{p['sft_loss'] - l_d:.3e}",
                  f"{p['reward']:.8f}")
  out = console()
  out.print(table)
  out.print(escape(FRONTIER_NOTE))
  return 0


def run_tree_compare(args, tf) -> int:
  configs = tree_recipe_configs(args.recipe_option)
  with console(stderr=True).status("compare") as status:
    rows = tree_compare_rows(tf.tree, args.recipe_steps, args.recipe_lr, configs,
                             progress=lambda n: status.update(f"compare: {n}"), notice=_notice)
  defaults = {"recipe_steps": args.recipe_steps, "recipe_lr_per_time_unit": args.recipe_lr,
              "recipe_options": list(args.recipe_option), "time_unit": time_unit(tf.tree),
              "tree_recipes": list(TREE_RECIPES)}
  if args.json:
    print_json({"recipes": rows, "defaults": defaults, "instance": tree_shape(tf.tree),
                "provenance": provenance()})
    return 0
  table = Table(title=escape(f"end points on the tree {args.file} (leaf set; regret: this "
                             "project's D4)"))
  cols = ("name", "kind") + ROW_VALUES + ("status", "seconds")
  for c in cols:
    table.add_column(c, justify="left" if c in ("name", "kind", "status") else "right")
  for r in rows:
    table.add_row(*[escape(str(r[c])) if c in ("name", "kind", "status") else cell(r[c])
                    for c in cols])
  console().print(table)
  return 0


def _flow_recipe(args):
  if args.pipeline is not None:
    raise InputError(f"--pipeline: {args.file} is a tree file; give --construct "
                     f"({', '.join(KL_CONSTRUCT_RECIPES)}) or --recipe instead")
  if (args.construct is None) == (args.recipe is None):
    raise InputError("--construct/--recipe: a tree flow needs exactly one of them")
  if args.construct is not None:
    return args.construct, KL_CONSTRUCT_RECIPES[args.construct]
  if args.recipe not in TREE_RECIPES:
    raise InputError(f"--recipe: no tree recipe {args.recipe!r} (tree recipes: "
                     f"{', '.join(TREE_RECIPES) or 'none'})")
  return args.recipe, TREE_RECIPES[args.recipe]


def tree_flow_points(tree, recipe, steps: int, lr: float, points: int, notice=None) -> dict:
  """The ascent of one construct or recipe at ``points`` + 1 points (JSON-ready)."""
  per = -(-steps // points)
  unit = time_unit(tree)
  kind = "exact field"
  try:
    thetas, _ = tree_recipe_path(tree, recipe, per * points, lr * unit, points)
  except InfeasibleExactField as e:
    if notice:
      notice(f"{recipe.name}: exact field infeasible ({e}); estimator averaged over "
             f"{SAMPLED_GROUPS} calls per step")
    thetas, _ = tree_recipe_path(tree, recipe, per * points, lr * unit, points,
                                 key=jax.random.PRNGKey(0), samples=SAMPLED_GROUPS)
    kind = "estimator"
  values = {k: np.asarray(v) for k, v in path_values(tree, thetas).items()}
  out = []
  for i in range(points + 1):
    p = {"step": i * per}
    p.update({k: (float(values[k][i]) if np.isfinite(values[k][i]) else None)
              for k in ROW_VALUES})
    out.append(p)
  return {"steps": per * points, "learning_rate": lr * unit, "time_unit": unit, "field": kind,
          "points": out}


def run_tree_flow(args, tf) -> int:
  name, recipe = _flow_recipe(args)
  res = tree_flow_points(tf.tree, recipe, args.steps, args.lr, args.points, _notice)
  res = {("construct" if args.construct else "recipe"): name, **res}
  if args.json:
    print_json({**res, "provenance": provenance()})
    return 0
  table = Table(title=escape(f"{name} on the tree {args.file} ({res['steps']} steps, learning "
                             f"rate {res['learning_rate']:.6g}, {res['field']})"))
  cols = ("step",) + ROW_VALUES
  for c in cols:
    table.add_column(c, justify="right")
  for p in res["points"]:
    table.add_row(*[str(p[c]) if c == "step" else cell(p[c]) for c in cols])
  console().print(table)
  return 0

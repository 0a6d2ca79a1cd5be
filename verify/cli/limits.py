"""The limits every command runs under, checked before any work starts.

- An instance file is read only if it is a regular file of at most ``--max-bytes`` bytes.
- The job's peak memory and wall time are estimated from the size of its input
  (:mod:`..budget`) and it is refused, one line and exit status 2, when the estimate exceeds
  ``--max-memory GB`` (default: the memory available now) or ``--max-seconds S``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from ...theory import flows
from ...theory.instance import Instance, InstanceError
from ...theory.objectives import rl_support
from ...theory.recipes.groups import MAX_GROUP_ENUMERATION
from ...theory.tree.recipes.registry import TREE_RECIPES
from .. import budget
from ..compare import SAMPLED_GROUPS
from ..errors import InputError
from ..io import (
  DEFAULT_MAX_BYTES,
  instance_from_dict,
  parse_instance,
  parse_json_strict,
  read_bounded,
)
from ..tree_io import TreeFile, tree_from_dict

__all__ = ["limits", "load_instance", "load_input", "is_tree_object", "require_verify",
           "reward_levels", "GROUP_SIZE"]

GROUP_SIZE = 8  # the published group size of the GRPO-style recipes (grpo, hpt, luffy, relift)


def limits(args) -> budget.Limits:
  """The command's --max-memory and --max-seconds (defaults: available memory, 1 hour)."""
  return budget.Limits.from_options(args.max_memory, args.max_seconds)


def _phases(inst: Instance, pipeline: str) -> int:
  return int(flows.pipeline_schedule(pipeline, inst).duration.shape[0])


def reward_levels(inst: Instance) -> int:
  """The most distinct rewards on one prompt's RL support (as theory.recipes.groups counts
  them; vectorised: one sort, not one np.unique per prompt)."""
  v = np.where(np.asarray(rl_support(inst)), np.asarray(inst.reward, np.float64), np.nan)
  v.sort(axis=1)  # NaN last
  present = ~np.isnan(v)
  distinct = present[:, 0] + np.sum((np.diff(v, axis=1) != 0) & present[:, 1:], axis=1)
  return max(1, int(distinct.max()))


def _group_tables(inst: Instance) -> tuple[int, int]:
  """(multisets an exact group expectation enumerates, estimator samples per step)."""
  m = reward_levels(inst)
  k = math.comb(GROUP_SIZE - 1 + m - 1, m - 1)
  return (0, SAMPLED_GROUPS) if k > MAX_GROUP_ENUMERATION else (k, 0)


def _estimate(args, inst: Instance, parse: tuple[float, float]) -> budget.Estimate:
  n_x, n_y = inst.shape
  if args.command == "check":
    return budget.check_cost(n_x, n_y, parse)
  if args.command == "frontier":
    return budget.frontier_cost(n_x, n_y, parse, len(str(args.lambdas).split(",")))
  if args.command == "flow":
    if args.pipeline is None:
      raise InputError("--pipeline: is required for an instance file (one of "
                       f"{', '.join(flows.PIPELINE_NAMES)})")
    if getattr(args, "construct", None) is not None or getattr(args, "recipe", None) is not None:
      raise InputError("--construct/--recipe: are for tree files; an instance file takes "
                       "--pipeline")
    return budget.flow_cost(n_x, n_y, parse, args.points, _phases(inst, args.pipeline))
  if args.command == "compare":
    multisets, samples = _group_tables(inst)
    return budget.compare_cost(n_x, n_y, parse, args.recipe_steps, multisets, samples)
  raise ValueError(f"no estimate for {args.command!r}")


def is_tree_object(obj) -> bool:
  """Whether a parsed input file is in the tree format (the one place commands dispatch on it).

  A tree file (verify/tree_io.py) has no top-level ``data`` and either prompts that are objects
  or a top-level ``vocab`` / ``eos`` / ``max_length``; an atomic file's ``prompts`` are labels.
  """
  if not isinstance(obj, dict) or "data" in obj:
    return False
  prompts = obj.get("prompts")
  return (isinstance(prompts, list) and any(isinstance(p, dict) for p in prompts)) or any(
      k in obj for k in ("vocab", "eos", "max_length"))


def _tree_estimate(args, tf: TreeFile, parse: tuple[float, float]) -> budget.Estimate:
  shape = budget.TreeShape.of(tf.tree)
  if args.command == "check":
    return budget.tree_check_cost(shape, parse)
  if args.command == "frontier":
    return budget.tree_frontier_cost(shape, parse, len(str(args.lambdas).split(",")))
  if args.command == "flow":
    return budget.tree_flow_cost(shape, parse, args.steps, args.points)
  if args.command == "compare":
    return budget.tree_compare_cost(shape, parse, args.recipe_steps, len(TREE_RECIPES))
  raise ValueError(f"no estimate for {args.command!r}")


def load_input(args) -> tuple[Instance, dict] | TreeFile:
  """Reads ``args.file`` (atomic instance or tree file) within the limits.

  Returns:
    (instance, labels) for an atomic file, a :class:`~..tree_io.TreeFile` for a tree file
    (``--allow-large`` lifts the tree format's size caps).

  Raises:
    InputError: the file (not a regular file, too big, invalid) or the estimate over a limit.
  """
  lim = limits(args)
  raw = read_bounded(args.file, DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes)
  parse = budget.parse_cost(len(raw), raw.count(b",") + 1)
  budget.require(budget.Estimate(f"reading {args.file} ({len(raw)} bytes)", *parse),
                 dataclasses.replace(lim, seconds=math.inf))
  obj = parse_json_strict(raw, args.file)
  if not is_tree_object(obj):
    del raw
    try:
      inst, labels = instance_from_dict(obj)
    except (InputError, InstanceError) as e:
      raise type(e)(f"{args.file}: {e}") from None
    budget.require(_estimate(args, inst, parse), lim)
    return inst, labels
  tree_obj = json.loads(raw.decode("utf-8"))  # integers stay integers (max_length)
  if getattr(args, "allow_large", False):
    tree_obj["allow_large"] = True
  try:
    tf = tree_from_dict(tree_obj)
  except InputError as e:
    raise InputError(f"{args.file}: {e}") from None
  budget.require(_tree_estimate(args, tf, parse), lim)
  return tf


def load_instance(args) -> tuple[Instance, dict]:
  """Reads ``args.file`` within --max-bytes, then refuses the command if it would not fit.

  Returns:
    (instance, labels) as :func:`verify.io.read_instance`.

  Raises:
    InputError: the file (not a regular file, too big, invalid) or the estimate over a limit.
  """
  lim = limits(args)
  raw = read_bounded(args.file, DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes)
  parse = budget.parse_cost(len(raw), raw.count(b",") + 1)
  # Memory only: reading is part of the command, whose time estimate below includes it.
  budget.require(budget.Estimate(f"reading {args.file} ({len(raw)} bytes)", *parse),
                 dataclasses.replace(lim, seconds=math.inf))
  inst, labels = parse_instance(raw, args.file)
  del raw
  budget.require(_estimate(args, inst, parse), lim)
  return inst, labels


def require_verify(args, statements: int) -> None:
  """Refuses a `verify` job over its limits."""
  budget.require(budget.verify_cost(args.instances, args.search_examples, statements),
                 limits(args))

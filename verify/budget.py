"""How much memory and time a command will take, estimated from its input before it starts.

Each estimate is a fixed cost (start-up, JAX compilation) plus per-unit costs (an instance entry,
a parsed JSON value, a recipe step on one entry, a random instance, a model FLOP), and the command
line refuses a job whose estimate exceeds its limits (``--max-memory GB``, ``--max-seconds S``)
with one line naming the estimate, the limit and the flag that raises it. The default memory
limit is the memory the machine has available when the command starts (``MemAvailable``); the
default time limit is :data:`DEFAULT_MAX_SECONDS`.

The constants were measured on the project's machine (2 shared x86-64 cores, 23 GiB, XLA:CPU,
float64) with ``/usr/bin/time``: peak RSS (``%M``) and CPU time (user + system) of the whole
command, on instances of several sizes, a line fitted through them and rounded up; the comment
at each constant gives the runs. Times are CPU seconds, which is the wall time when the command
has one core to itself: the machine was shared (load 12 on 2 cores, wall times 5-10x the CPU
times), so wall times were not reproducible. With two idle cores a command is up to ~1.5x faster
than estimated (XLA splits large operations over both); on a loaded machine it is slower, which
``--max-seconds`` allows for. Memory per entry does not depend on the machine.
"""

from __future__ import annotations

import dataclasses
import math
import os

from .errors import InputError

__all__ = ["Estimate", "Limits", "DEFAULT_MAX_SECONDS", "GB", "available_memory",
           "require", "parse_cost", "check_cost", "frontier_cost", "flow_cost", "compare_cost",
           "verify_cost", "TreeShape", "tree_check_cost", "tree_frontier_cost", "tree_flow_cost",
           "tree_compare_cost", "qwen3_params", "qwen3_token_flops", "bridge_cost"]

GB = 1e9
DEFAULT_MAX_SECONDS = 3600.0

# --- measured constants (bytes, seconds) -------------------------------------------------------

# Python + JAX + our modules, imported (RSS), and the time to get there.
STARTUP_BYTES = 0.30 * GB
STARTUP_S = 3.0

# Reading an instance file: the bytes and the decoded text (2 per byte), and one Python float and
# its list slot per JSON value (32 bytes) plus the three float64 arrays built from them.
PARSE_BYTES_PER_BYTE = 2.0
PARSE_BYTES_PER_VALUE = 40.0
PARSE_S_PER_BYTE = 60e-9  # json.loads + checks: 173 MB (8.6M values) in 10.4 s

# check: compiling every quantity and statement (0.48 GB and 21 CPU s in all on 64 x 16), then
# one pass over the entries (16000 x 250 from a 173 MB file: 1.38 GB and 36 CPU s).
CHECK_BASE = (0.2 * GB, 18.0)
CHECK_PER_ENTRY = (100.0, 1.5e-6)

# frontier: per entry, and per entry and λ (64 x 16: 0.30 GB, 7.5 CPU s; 16000 x 250 at 6 λ:
# 1.10 GB, 24 CPU s).
FRONTIER_BASE = (0.05 * GB, 5.0)
FRONTIER_PER_ENTRY = (60.0, 0.0)
FRONTIER_PER_ENTRY_LAMBDA = (0.0, 3e-7)

# flow: adaptive steps of the whole [X, Y] field in each phase; the saved points hold [points, X, Y]
# policies (alternating, 10 phases: 64 x 16 0.45 GB 14.5 CPU s, 1000 x 100 1.02 GB 18.3 CPU s;
# sft_then_rl, 2 phases, 1000 x 100: 0.55 GB 15.5 CPU s; 8 points per phase).
FLOW_BASE = (0.15 * GB, 12.0)
FLOW_PER_ENTRY = (300.0, 5e-6)  # per phase
FLOW_PER_ENTRY_POINT = (40.0, 0.0)  # per saved point of each phase

# compare: 4 flows and 11 recipes. Fixed: compiling them (0.55 GB and 35 CPU s in all, with
# start-up, on 1k-16k entries with binary rewards). A recipe whose exact group expectation is
# feasible enumerates K multisets of reward levels per entry ([X, Y, K] temporaries: 35 B and
# 7.1e-9 s per entry, multiset and step, from 256 and 1024 entries with 12 levels, K = 31824).
# One whose exact field is infeasible runs its estimator on SAMPLED_GROUPS groups per step:
# 80 B per entry and sample, and per step 6.5e-8 s per entry and sample plus 1.2e-6 s per prompt
# and sample (64 x 256 at 50 and 200 steps, 256 x 16 at 200 steps: 60, 152 and 94 CPU s).
COMPARE_BASE = (0.25 * GB, 32.0)
COMPARE_PER_ENTRY = (6000.0, 150e-6)  # its 4 flows: 15 phases, 2 points each
COMPARE_PER_ENTRY_STEP = (0.0, 0.1e-6)
COMPARE_PER_ENTRY_MULTISET = (40.0, 0.0)
COMPARE_PER_ENTRY_MULTISET_STEP = (0.0, 8e-9)
COMPARE_PER_ENTRY_SAMPLE = (90.0, 0.0)
COMPARE_PER_ENTRY_SAMPLE_STEP = (0.0, 7e-8)
COMPARE_PER_PROMPT_SAMPLE = (500.0, 0.0)
COMPARE_PER_PROMPT_SAMPLE_STEP = (0.0, 1.3e-6)

# verify: compiling every statement's batched check (33 statements: 0.98 GB and 175 CPU s in all
# at 64 instances, 0.91 GB and 164 CPU s at 4096: the sweep itself is cheap); the Hypothesis
# search compiles once per searched statement and then costs per example (64 instances with 0,
# 20 and 100 examples over 25 searched statements: 175, 247 and 281 CPU s).
VERIFY_BASE = (0.6 * GB, 165.0)
VERIFY_PER_INSTANCE = (20e3, 0.0)
VERIFY_PER_INSTANCE_STATEMENT = (0.0, 1.5e-4)
VERIFY_SEARCH_PER_STATEMENT = (0.0, 2.7)  # when the search runs (--search-examples > 0)
VERIFY_PER_SEARCH_EXAMPLE = (0.0, 0.02)  # per example and statement

# Tree commands (token level): cost = a fixed part (compiling the level recursions, which grows
# with the number of levels T) plus a part per padded slot (X · Σ_t N_t · k: every array of a
# level is [X, N_t, k]) and, for ascent steps, per slot and step. Measured (CPU s, peak RSS) with
# /usr/bin/time: check of examples/tree_table.json (T = 3, 72 slots): 77.5 s, 0.90 GB; compare of
# it: 24.1 s, 0.41 GB; of a complete tree (k = 6, T = 4, 2 prompts, 1872 slots): check 112.8 s,
# 1.18 GB, compare 31.2 s, 0.48 GB (no tree recipes registered: each adds its trainer's compile, TREE_COMPARE_PER_RECIPE,
# not yet measured). flow and frontier: not measured; set from the same parts (one trainer and
# the path values; the atomic frontier's constants on the leaf set).
TREE_CHECK_BASE = (0.6 * GB, 57.0)
TREE_CHECK_PER_LEVEL = (0.0, 10.0)
TREE_CHECK_PER_SLOT = (150e3, 7e-3)
TREE_FRONTIER_BASE = (0.1 * GB, 6.0)
TREE_FRONTIER_PER_SLOT = (200.0, 0.0)
TREE_FRONTIER_PER_SLOT_LAMBDA = (0.0, 3e-7)
TREE_FLOW_BASE = (0.2 * GB, 15.0)
TREE_FLOW_PER_LEVEL = (0.0, 3.0)
TREE_FLOW_PER_SLOT = (35e3, 2e-3)
TREE_FLOW_PER_SLOT_STEP = (0.0, 1e-7)
TREE_FLOW_PER_SLOT_POINT = (200.0, 1e-5)
TREE_COMPARE_BASE = (0.12 * GB, 12.0)
TREE_COMPARE_PER_LEVEL = (0.0, 3.0)
TREE_COMPARE_PER_SLOT = (35e3, 2.2e-3)
TREE_COMPARE_PER_RECIPE = (0.05 * GB, 15.0)  # compiling one recipe's trainer (a guess)
TREE_COMPARE_PER_SLOT_STEP = (0.0, 1e-6)  # per recipe

# bridge: float32 forward FLOPs per CPU second (the Qwen3 forward of bench/bench_forward.py ran at
# 146.6 GFLOP/s on the 2 idle cores (README) and at 6.6 GFLOP/s wall under load 12 today; small
# scoring batches are less efficient), per-row overheads, and the fixed costs of loading and of
# the linear-head experiment (bridge demo: 0.65 GB, 27 CPU s).
BRIDGE_FLOPS_PER_S = 30e9
BRIDGE_BASE = (0.25 * GB, 10.0)
BRIDGE_EXPERIMENT = (0.1 * GB, 15.0)
BRIDGE_PER_ROW_S = 2e-3


# --- estimates and limits ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Estimated peak memory and wall time of one command on one input.

  Attributes:
    what: the job, as error messages name it (e.g. "compare on 1 × 1000000 entries").
    bytes: peak resident memory, bytes.
    seconds: wall time, seconds.
  """

  what: str
  bytes: float
  seconds: float


@dataclasses.dataclass(frozen=True)
class Limits:
  """The most memory (bytes) and time (seconds) a command may be estimated to need."""

  bytes: float
  seconds: float

  @classmethod
  def from_options(cls, max_memory_gb: float | None, max_seconds: float | None) -> Limits:
    """--max-memory GB (default: available memory) and --max-seconds S (default 3600)."""
    memory = available_memory() if max_memory_gb is None else max_memory_gb * GB
    return cls(memory, DEFAULT_MAX_SECONDS if max_seconds is None else max_seconds)


def available_memory() -> float:
  """Bytes of memory available to a new job now (Linux ``MemAvailable``; else physical memory)."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return float(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return math.inf


def _gb(b: float) -> str:
  return f"{b / GB:.3g} GB"


def _duration(s: float) -> str:
  if s < 120:
    return f"{s:.3g} s"
  if s < 7200:
    return f"{s / 60:.3g} min"
  return f"{s / 3600:.3g} h"


def require(estimate: Estimate, limits: Limits) -> None:
  """Refuses a job whose estimate exceeds the limits (memory first).

  Raises:
    InputError: one line naming the estimate, the limit and the flag that raises it.
  """
  what = estimate.what
  if estimate.bytes > limits.bytes:
    raise InputError(f"{what} needs about {_gb(estimate.bytes)} of memory (estimated), more than "
                     f"the limit of {_gb(limits.bytes)} (raise it with --max-memory GB)")
  if estimate.seconds > limits.seconds:
    raise InputError(f"{what} needs about {_duration(estimate.seconds)} (estimated), more than "
                     f"the limit of {_duration(limits.seconds)} (raise it with --max-seconds S)")


def _cost(*terms: tuple[tuple[float, float], float]) -> tuple[float, float]:
  """Σ count × (bytes, seconds) over (per-unit cost, count) pairs."""
  return (sum(c[0] * n for c, n in terms), sum(c[1] * n for c, n in terms))


def _entries(n_x: int, n_y: int) -> str:
  return f"{n_x} × {n_y} entries"


def parse_cost(file_bytes: int, values: int) -> tuple[float, float]:
  """(bytes, seconds) of reading an instance file of ``file_bytes`` holding ``values`` numbers."""
  return (STARTUP_BYTES + PARSE_BYTES_PER_BYTE * file_bytes + PARSE_BYTES_PER_VALUE * values,
          STARTUP_S + PARSE_S_PER_BYTE * file_bytes)


def _with_parse(what: str, parse: tuple[float, float], cost: tuple[float, float]) -> Estimate:
  return Estimate(what, parse[0] + cost[0], parse[1] + cost[1])


def check_cost(n_x: int, n_y: int, parse: tuple[float, float]) -> Estimate:
  """`check`: every quantity and statement margin."""
  e = n_x * n_y
  return _with_parse(f"check on {_entries(n_x, n_y)}", parse,
                     _cost((CHECK_BASE, 1), (CHECK_PER_ENTRY, e)))


def frontier_cost(n_x: int, n_y: int, parse: tuple[float, float], n_lambdas: int) -> Estimate:
  """`frontier` at ``n_lambdas`` values of λ."""
  e = n_x * n_y
  return _with_parse(f"frontier on {_entries(n_x, n_y)} and {n_lambdas} λ", parse,
                     _cost((FRONTIER_BASE, 1), (FRONTIER_PER_ENTRY, e),
                           (FRONTIER_PER_ENTRY_LAMBDA, e * n_lambdas)))


def flow_cost(n_x: int, n_y: int, parse: tuple[float, float], points: int,
              phases: int) -> Estimate:
  """`flow` of a pipeline with ``phases`` phases saving ``points`` points each."""
  e = n_x * n_y
  return _with_parse(f"flow on {_entries(n_x, n_y)}", parse,
                     _cost((FLOW_BASE, 1), (FLOW_PER_ENTRY, e * phases),
                           (FLOW_PER_ENTRY_POINT, e * points * phases)))


def compare_cost(n_x: int, n_y: int, parse: tuple[float, float], recipe_steps: int,
                 multisets: int, samples: int) -> Estimate:
  """`compare`: every pipeline and recipe.

  Args:
    multisets: the largest multiset table an exact group expectation enumerates (0: none).
    samples: groups per step of a recipe trained with its estimator (0: none).
  """
  e = n_x * n_y
  return _with_parse(f"compare on {_entries(n_x, n_y)}", parse, _cost(
      (COMPARE_BASE, 1), (COMPARE_PER_ENTRY, e), (COMPARE_PER_ENTRY_STEP, e * recipe_steps),
      (COMPARE_PER_ENTRY_MULTISET, e * multisets),
      (COMPARE_PER_ENTRY_MULTISET_STEP, e * multisets * recipe_steps),
      (COMPARE_PER_ENTRY_SAMPLE, e * samples),
      (COMPARE_PER_ENTRY_SAMPLE_STEP, e * samples * recipe_steps),
      (COMPARE_PER_PROMPT_SAMPLE, n_x * samples),
      (COMPARE_PER_PROMPT_SAMPLE_STEP, n_x * samples * recipe_steps)))


def verify_cost(instances: int, search_examples: int, statements: int) -> Estimate:
  """`verify`: ``instances`` random instances, ``statements`` statements and the search
  (``search_examples`` per statement; counted for every statement, a little high: statements
  checked only on the sweep are not searched)."""
  b, s = _cost((VERIFY_BASE, 1), (VERIFY_PER_INSTANCE, instances),
               (VERIFY_PER_INSTANCE_STATEMENT, instances * statements),
               (VERIFY_SEARCH_PER_STATEMENT, statements if search_examples else 0),
               (VERIFY_PER_SEARCH_EXAMPLE, search_examples * statements))
  return Estimate(f"verify on {instances} instances and {search_examples} search examples × "
                  f"{statements} statements", STARTUP_BYTES + b, STARTUP_S + s)


@dataclasses.dataclass(frozen=True)
class TreeShape:
  """The size of a tree instance: levels T and padded slots X · Σ_t N_t · k."""

  levels: int
  slots: int

  @classmethod
  def of(cls, tree) -> TreeShape:
    """The shape of an unbatched :class:`~nondecoupling.theory.tree.instance.TreeInstance`."""
    return cls(len(tree.levels), int(sum(math.prod(lv.reference.shape) for lv in tree.levels)))


def _tree_what(command: str, shape: TreeShape) -> str:
  return f"{command} on a tree of {shape.slots} slots over {shape.levels} levels"


def tree_check_cost(shape: TreeShape, parse: tuple[float, float]) -> Estimate:
  """`check` of a tree: quantities, fixed points and the G1–G4 margins (flows included)."""
  return _with_parse(_tree_what("check", shape), parse, _cost(
      (TREE_CHECK_BASE, 1), (TREE_CHECK_PER_LEVEL, shape.levels),
      (TREE_CHECK_PER_SLOT, shape.slots)))


def tree_frontier_cost(shape: TreeShape, parse: tuple[float, float], n_lambdas: int) -> Estimate:
  """`frontier` of a tree (on its leaf set: one response per slot)."""
  return _with_parse(_tree_what("frontier", shape), parse, _cost(
      (TREE_FRONTIER_BASE, 1), (TREE_FRONTIER_PER_SLOT, shape.slots),
      (TREE_FRONTIER_PER_SLOT_LAMBDA, shape.slots * n_lambdas)))


def tree_flow_cost(shape: TreeShape, parse: tuple[float, float], steps: int,
                   points: int) -> Estimate:
  """`flow` of a tree: ``steps`` exact-field steps, ``points`` recorded points."""
  return _with_parse(_tree_what("flow", shape), parse, _cost(
      (TREE_FLOW_BASE, 1), (TREE_FLOW_PER_LEVEL, shape.levels),
      (TREE_FLOW_PER_SLOT, shape.slots), (TREE_FLOW_PER_SLOT_STEP, shape.slots * steps),
      (TREE_FLOW_PER_SLOT_POINT, shape.slots * points)))


def tree_compare_cost(shape: TreeShape, parse: tuple[float, float], recipe_steps: int,
                      recipes: int) -> Estimate:
  """`compare` of a tree: the exact rows and fixed points, and ``recipes`` trained recipes."""
  return _with_parse(_tree_what("compare", shape), parse, _cost(
      (TREE_COMPARE_BASE, 1), (TREE_COMPARE_PER_LEVEL, shape.levels),
      (TREE_COMPARE_PER_SLOT, shape.slots), (TREE_COMPARE_PER_RECIPE, recipes),
      (TREE_COMPARE_PER_SLOT_STEP, shape.slots * recipe_steps * recipes)))


def qwen3_params(vocab: int, hidden: int, intermediate: int, layers: int, heads: int,
                 kv_heads: int, head_dim: int, tied: bool) -> int:
  """Parameters of a Qwen3 (embedding, projections, MLP, norms; the head if untied)."""
  attn = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden + 2 * head_dim
  per_layer = attn + 3 * hidden * intermediate + 2 * hidden
  return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def qwen3_token_flops(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                      head_dim: int, length: int) -> float:
  """Matmul FLOPs per token of a forward over sequences of ``length`` (no LM head)."""
  proj = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
  return 2.0 * layers * (proj + 3 * hidden * intermediate + 2 * heads * head_dim * length)


def bridge_cost(what: str, params: int, weight_bytes: float, devices: int,
                flops: float, rows: int, batch_tokens: int, hidden: int, intermediate: int,
                experiment: bool) -> Estimate:
  """A bridge command: load the weights, forward ``rows`` padded rows, maybe train the head.

  Args:
    params: model parameters; weight_bytes: bytes per parameter once loaded (4 or 2).
    devices: local devices the weights are replicated over.
    flops: total forward FLOPs of every padded row.
    batch_tokens: tokens in one padded batch (activations live per batch).
    experiment: add the linear-head experiment's fixed cost.
  """
  weights = params * (weight_bytes * (1 + devices) + 4)  # file read, device copies, f32 upcast
  activations = batch_tokens * (8 * hidden + 3 * intermediate) * 4 * 2
  b = STARTUP_BYTES + BRIDGE_BASE[0] + weights + activations
  s = STARTUP_S + BRIDGE_BASE[1] + flops / BRIDGE_FLOPS_PER_S + rows * BRIDGE_PER_ROW_S
  if experiment:
    b += BRIDGE_EXPERIMENT[0]
    s += BRIDGE_EXPERIMENT[1]
  return Estimate(what, b, s)

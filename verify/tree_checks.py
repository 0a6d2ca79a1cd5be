"""The token-level statements (THEORY.md G1–G4, this project's) for `verify`, over random trees.

:data:`TREE_STATEMENTS` is a tuple of :class:`~.statement.Statement` with batched ``check``
functions, like :data:`~.registry.FLOW_STATEMENTS`: ``check(batch, key)`` receives the sweep's
atomic batch (only its size is used) and the key, draws :func:`tree_count` random trees from
:mod:`.tree_families` (16–``TREE_CHUNK`` for a small batch, ``TREE_CHUNK`` × 1–``MAX_CHUNKS``
for a larger one; every family in equal parts, one bucket, deterministic in the key and the
batch) and returns a
:class:`~nondecoupling.theory.verdict.Verdict` of arrays over those trees. Every exact statement
is evaluated at once, in one jit + vmap over chunks of at most ``TREE_CHUNK`` trees sharded over
the devices (one compile for all of them), and the result is cached for the other statements' checks.
Statements on a policy use probe logits N(0, 2²) drawn with the trees. The flow statements (G4)
integrate a flow per tree, so they run on as many trees as the batch has instances (at most
``FLOW_SAMPLE``) spread over the batch's families
(natural-gradient geometry); a tree whose flow did not become stationary within ``FLOW_STEPS``
Euler steps (the k3 flow is stiff for small β), or whose first-order distance bound
(:mod:`nondecoupling.theory.tree.stopping`) is not small, does not count.

The search (:func:`evaluate_tree_file`) evaluates the exact statements on small tree files the
same way, all at once, cached per (tree, probe seed). :func:`tree_margins` is what ``check``
reports for a tree file.
"""

from __future__ import annotations

import functools
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from ..theory.statements import tokens
from ..theory.tree.instance import TreeInstance
from ..theory.verdict import Verdict
from .exported_programs import FULL_OPTIMISATION, exported_jit
from .host_arrays import on_device
from .statement import Statement, verdict_row
from .stored_programs import program_name
from .sweep import shard_batch
from .tree_families import SMALL_BUCKET, TREE_BUCKET, concat_batches, sample_trees
from .tree_io import tree_from_dict

__all__ = ["TREE_STATEMENTS", "TREE_NAMES", "FLOW_SAMPLE", "FLOW_STEPS", "CHECK_BUCKET",
           "TREE_CHUNK", "MIN_CHUNK", "MAX_CHUNKS", "padded_batch", "take_rows", "trees_for_batch",
           "tree_count", "evaluate_trees", "tree_margins", "looks_like_tree_file",
           "evaluate_tree_file", "evaluate_tree_files", "SEARCHABLE_TREE_STATEMENTS"]

FLOW_SAMPLE = 16
FLOW_STEPS = 5_000
FLOW_RESIDUAL = 1e-11
TREE_CHUNK = 128  # trees per compiled call (one shape: every statement compiles once)
MIN_CHUNK = 16    # the smallest sweep: a batch of n ≤ 128 instances gets the power of two ≥ n
MAX_CHUNKS = 3    # chunks per sweep batch: 7 families × 3 × 128 = 2688 trees in the default run


CHECK_BUCKET = TREE_BUCKET  # the bucket every check draws its trees in


@functools.lru_cache(maxsize=8)
def _trees(n: int, seed: int, bucket) -> tuple[TreeInstance, tuple]:
  """The sweep's trees and probe logits, NumPy arrays (each call site places what it runs)."""
  parts = sample_trees(n, seed, bucket, on_host=True)
  return (concat_batches([p[1] for p in parts], on_host=True),
          concat_batches([p[2] for p in parts], on_host=True))


def tree_count(n_batch: int) -> int:
  """Trees drawn for a sweep batch of n instances: the power of two ≥ n within [MIN_CHUNK,
  TREE_CHUNK] for n ≤ TREE_CHUNK (so a small run sweeps about as many trees as it asked for
  instances, at one of four shapes), else TREE_CHUNK × min(⌈n / TREE_CHUNK⌉, MAX_CHUNKS)."""
  n = int(n_batch)
  if n <= TREE_CHUNK:
    return max(MIN_CHUNK, 1 << (max(n, 1) - 1).bit_length())
  return TREE_CHUNK * min(MAX_CHUNKS, -(-n // TREE_CHUNK))


def _digest(batch, key) -> int:
  return int(zlib.crc32(np.asarray(jax.random.key_data(key)).tobytes()
                        + np.asarray(batch.beta, np.float64).tobytes()))


def trees_for_batch(batch, key) -> tuple[TreeInstance, tuple]:
  """:func:`tree_count` random trees (and probe logits) for a batch, deterministic in both."""
  n = int(np.asarray(batch.prompt_weights).shape[0])
  return _trees(tree_count(n), _digest(batch, key), CHECK_BUCKET)


@functools.lru_cache(maxsize=None)
def _compiled(fn, with_probe: bool, optimise: bool):
  batched = jax.vmap(fn) if with_probe else jax.vmap(lambda tree, probe: fn(tree))
  name = program_name(fn)
  if name is None:
    return jax.jit(batched, compiler_options=FULL_OPTIMISATION if optimise else None)
  return exported_jit(batched, f"{name}[vmap, probe={with_probe}]", optimise)


def evaluate_trees(fn, trees: TreeInstance, probes: tuple, with_probe: bool,
                   optimise: bool = False) -> Verdict:
  """Verdict [B] of an unbatched statement ``fn(tree[, θ])`` on a batch of trees (``optimise``:
  compiled at XLA's full optimisation, for a flow: :mod:`.exported_programs`)."""
  return _compiled(fn, with_probe, optimise)(trees, probes)


def _exact_verdicts(tree: TreeInstance, theta: tuple) -> Verdict:
  """Every exact (non-flow) tree statement at once: a Verdict of [S] arrays (one compile)."""
  vs = [_UNBATCHED[name](tree, theta) for name in _EXACT]
  return Verdict(*(jnp.stack([jnp.asarray(getattr(v, f), jnp.float64) for v in vs])
                   for f in Verdict._fields))


_ALL_EXACT = exported_jit(jax.vmap(_exact_verdicts), f"{__name__}._exact_verdicts[vmap]")


@functools.lru_cache(maxsize=16)
def _sweep_verdicts(n_trees: int, digest: int, bucket) -> dict:
  """{name: Verdict of numpy [n_trees]} of every exact statement, in chunks sharded over devices."""
  trees, probes = _trees(n_trees, digest, bucket)
  parts, size = [], min(n_trees, TREE_CHUNK)
  for lo in range(0, n_trees, size):
    chunk = jax.tree.map(lambda a: np.asarray(a)[lo:lo + size], (trees, probes))
    placed, n = shard_batch(chunk)
    out = _ALL_EXACT(*placed)
    parts.append([np.asarray(a)[:n] for a in out])
  cols = [np.concatenate([p[i] for p in parts]) for i in range(len(Verdict._fields))]
  return {name: Verdict(*(c[:, j] for c in cols)) for j, name in enumerate(_EXACT)}


def _checker(name: str):
  def check(batch, key) -> Verdict:
    n = int(np.asarray(batch.prompt_weights).shape[0])
    v = _sweep_verdicts(tree_count(n), _digest(batch, key), CHECK_BUCKET)[name]
    return v._replace(applies=v.applies.astype(bool))
  return check


def _flow_fn(construct: str):
  return functools.partial(tokens.flow_reaches_fixed_point, construct=construct,
                           tol=FLOW_RESIDUAL, max_steps=FLOW_STEPS)


def flow_trees_for_batch(batch, key) -> tuple[TreeInstance, tuple]:
  """The trees (and probes) a flow statement runs on: as many of :func:`trees_for_batch` as the
  batch has instances, at most FLOW_SAMPLE, spread over every family."""
  trees, probes = trees_for_batch(batch, key)
  n = trees.prompt_weights.shape[0]
  size = min(n, FLOW_SAMPLE, int(np.asarray(batch.prompt_weights).shape[0]))
  pick = np.unique(np.linspace(0, n - 1, size).astype(int))
  return take_rows((trees, probes), pick)


def take_rows(batch, rows: np.ndarray):
  """The given rows of every array of a batched pytree, indexed on the host and placed on the
  default device in one transfer (indexing each array with JAX dispatches one gather per leaf:
  4 s of Python in a warm `verify --instances 16`, though mostly overlapped with the flows)."""
  return jax.device_put(jax.tree.map(lambda a: np.asarray(a)[rows], batch))


def padded_batch(trees_probes, minimum: int = 1):
  """(trees, probes) repeated cyclically to the next power of two ≥ max(their count, ``minimum``)
  rows, and their count.

  Every batch of a statement is evaluated at one of a few shapes, so its program compiles once
  for every batch size up to that power (and is shared through the caches by every run of
  ``verify``); the caller keeps the first rows of the result.
  """
  n = int(jax.tree.leaves(trees_probes)[0].shape[0])
  size = 1 << (max(n, minimum) - 1).bit_length()
  if n == size:
    return trees_probes, n
  return take_rows(trees_probes, np.arange(size) % n), n


def _flow_checker(construct: str):
  fn = _flow_fn(construct)

  def check(batch, key) -> Verdict:
    # One tree per call (one program of batch 1): a vmapped flow runs every tree for as many
    # steps as the slowest takes, and a stiff k3 tree takes up to 40× the median (a warm
    # `verify --instances 16` spent 13 of its 29 s in k3 flows, 90 µs per tree and step).
    host = jax.tree.map(np.asarray, flow_trees_for_batch(batch, key))
    n = int(host[0].prompt_weights.shape[0])
    parts = [evaluate_trees(fn, *take_rows(host, np.arange(i, i + 1)), with_probe=False,
                            optimise=True)
             for i in range(n)]  # dispatched asynchronously, then read
    v = Verdict(*(np.concatenate([np.asarray(getattr(p, f)) for p in parts])
                  for f in Verdict._fields))
    return v._replace(applies=v.applies.astype(bool))
  return check


_UNBATCHED: dict = {}  # name -> unbatched fn(tree, θ)
_EXACT: list = []      # names of the exact statements, in order (evaluated together)


def _s(name, title, fn, with_probe, check=None):
  _UNBATCHED[name] = fn if with_probe else (lambda tree, theta: fn(tree))
  if check is None:
    _EXACT.append(name)
  return Statement(name=name, title=title, source="ours", expected="holds", kind="identity",
                   fn=None, uses_probe=with_probe, check=check or _checker(name),
                   instances=trees_for_batch if check is None else flow_trees_for_batch)


def _stationary(construct):
  return functools.partial(tokens.fixed_point_stationary, construct=construct)


TREE_STATEMENTS: tuple[Statement, ...] = (
    _s("G1 soft_value_is_log_partition", "V(root) = β log Σ_y ρ(y) e^{r(y)/β}",
       tokens.soft_value_is_log_partition, False),
    _s("G1 bellman_policy_is_tilt", "Π_t π*(y_t|y_<t) = π*_β(y)", tokens.bellman_policy_is_tilt,
       False),
    _s("G2 token_sum_is_sequence_loss", "Σ_t −log π(y_t|y_<t) averaged over d = L(π)",
       tokens.token_sum_is_sequence_loss, True),
    _s("G2 token_sum_gradient", "∇ token-sum SFT = w D(s)(π(·|s) − d(·|s)) = ∇L",
       tokens.token_sum_gradient, True),
    _s("G2 token_mean_optimum", "token-mean optimum ∝ d(y)/|y|", tokens.token_mean_optimum, False),
    _s("G2 token_mean_stationary", "∇ token-mean SFT = 0 at π_mean", tokens.token_mean_stationary,
       False),
    _s("G2 token_mean_excess", "L(π_mean) − L(d) = E_d log|y| + log E_d(1/|y|)",
       tokens.token_mean_excess, False),
    _s("G3 k1_reward_is_kl_gradient", "k1 in the reward: E[(Σk1)∇log π] = ∇KL(π‖ρ)",
       tokens.k1_reward_is_kl_gradient, True),
    _s("G3 k1_loss_has_no_gradient", "k1 in the loss: E Σ∇k1 = 0", tokens.k1_loss_has_no_gradient,
       True),
    _s("G3 k2_loss_is_node_kl_gradient", "k2 in the loss: E Σ∇k2 = P(s)∇_s KL(π(·|s)‖ρ(·|s))",
       tokens.k2_loss_is_node_kl_gradient, True),
    _s("G3 k2_misses_later_reach_terms", "∇KL − E Σ∇k2 = P(s) F_s K(s·)",
       tokens.k2_misses_later_reach_terms, True),
    _s("G3 k2_is_kl_gradient_at_depth_1", "depth 1: E Σ∇k2 = ∇KL(π‖ρ)",
       tokens.k2_is_kl_gradient_at_depth_1, True),
    _s("G3 k3_loss_is_forward_kl", "k3 in the loss: E Σ∇k3 = P(s)(π(·|s) − ρ(·|s))",
       tokens.k3_loss_is_forward_kl, True),
    _s("G3 k3_clamped_loss_field", "verl clamped k3 in the loss: closed form = autodiff",
       tokens.k3_clamped_loss_field, True),
    _s("G3 k3_value_is_kl", "E_π Σ_t k3_t = KL(π‖ρ)", tokens.k3_value_is_kl, True),
    _s("G4 k1_reward_fixed_point", "k1 in the reward: the Gibbs tilt is stationary",
       _stationary("k1_reward"), False),
    _s("G4 k2_loss_fixed_point", "k2 in the loss: π ∝ ρ e^{Q^π/β} is stationary",
       _stationary("k2_loss"), False),
    _s("G4 k3_loss_fixed_point", "k3 in the loss: π = βρ/(β + V^π − Q^π) is stationary",
       _stationary("k3_loss"), False),
    _s("G4 k2_fixed_point_is_tilt_at_depth_1", "depth 1: the k2 fixed point is the Gibbs tilt",
       tokens.k2_fixed_point_is_tilt_at_depth_1, False),
    _s("G4 k1_reward_flow", "the k1-in-reward flow stops at π*_β", _flow_fn("k1_reward"), False,
       _flow_checker("k1_reward")),
    _s("G4 k2_loss_flow", "the k2-in-loss flow stops at its closed form", _flow_fn("k2_loss"),
       False, _flow_checker("k2_loss")),
    _s("G4 k3_loss_flow", "the k3-in-loss flow stops at its closed form", _flow_fn("k3_loss"),
       False, _flow_checker("k3_loss")),
)


TREE_NAMES = frozenset(s.name for s in TREE_STATEMENTS)
SEARCHABLE_TREE_STATEMENTS = frozenset(_EXACT)  # the flows are not searched


def _all_tree_verdicts(tree: TreeInstance, theta: tuple) -> list:
  return [_UNBATCHED[s.name](tree, theta) for s in TREE_STATEMENTS]


_ALL_SMALL = exported_jit(_exact_verdicts, f"{__name__}._exact_verdicts")
# Every statement of `check` on one tree, kept on disk: a warm `check` does not trace it.
_ALL_VERDICTS = exported_jit(_all_tree_verdicts, f"{__name__}._all_tree_verdicts")


@functools.lru_cache(maxsize=4096)
def _small_verdicts(text: str, seed: int):
  raw = json.loads(text)
  tree = tree_from_dict(raw, SMALL_BUCKET).tree
  theta = tuple(on_device(a) for a in _search_probe(seed))
  return Verdict(*(np.asarray(a) for a in _ALL_SMALL(tree, theta)))


def evaluate_tree_file(name: str, raw: dict, seed: int) -> Verdict | None:
  """Verdict of the exact tree statement ``name`` on a tree-file object (padded to
  :data:`~.tree_families.SMALL_BUCKET`, probe logits N(0, 2²) from ``seed``); None for the flow
  statements. Every exact statement is evaluated at once and cached per (object, seed), so the
  searches of all statements share one compile and their evaluations."""
  if name not in _EXACT:
    return None
  v = _small_verdicts(json.dumps(raw, sort_keys=True), int(seed))
  j = _EXACT.index(name)
  return Verdict(*(a[j] for a in v))._replace(applies=bool(v.applies[j]))


def _search_probe(seed: int) -> list:
  """The probe logits of the tree search's example with this seed: N(0, 2²) per level of
  SMALL_BUCKET, [prompts, nodes, vocab] NumPy arrays."""
  rng = np.random.default_rng(int(seed))
  return [rng.normal(0.0, 2.0, (SMALL_BUCKET.prompts, n, SMALL_BUCKET.vocab))
          for n in SMALL_BUCKET.nodes]


def _probe_in_bucket(seed: int, tree: TreeInstance) -> tuple:
  """:func:`_search_probe` laid into ``tree``'s larger bucket (a node keeps its index, a token
  its slot; the entries added are zero)."""
  small = _search_probe(seed)
  out = []
  for level, lv in enumerate(tree.levels):
    big = np.zeros(lv.reference.shape)
    if level < len(small):
      x, n, k = small[level].shape
      big[:x, :n, :k] = small[level]
    out.append(big)
  return tuple(out)


def evaluate_tree_files(examples: list) -> dict:
  """{statement: Verdict of numpy [N]} of every exact tree statement on N (tree-file object,
  probe seed) pairs: what :func:`evaluate_tree_file` gives one by one (the same trees and probe
  logits), in the sweep's batched program (:data:`CHECK_BUCKET`, chunks of a power of two
  between :data:`MIN_CHUNK` and :data:`TREE_CHUNK` trees sharded over the devices; a run of
  ``verify`` has compiled it at :data:`TREE_CHUNK` already)."""
  size = min(TREE_CHUNK, max(MIN_CHUNK, 1 << (max(len(examples), 1) - 1).bit_length()))
  parts = []
  for lo in range(0, len(examples), size):
    trees, thetas = [], []
    for raw, seed in examples[lo:lo + size]:
      tree = tree_from_dict(json.loads(json.dumps(raw, sort_keys=True)), CHECK_BUCKET).tree
      thetas.append(_probe_in_bucket(seed, tree))
      trees.append(jax.tree.map(np.asarray, tree))
    n = len(trees)
    stacked = (jax.tree.map(lambda *xs: np.stack(xs), *trees),
               jax.tree.map(lambda *xs: np.stack(xs), *thetas))
    rows = np.arange(size) % n  # one shape for every chunk
    placed, _ = shard_batch(jax.tree.map(lambda a: a[rows], stacked))
    parts.append([np.asarray(a)[:n] for a in _ALL_EXACT(*placed)])
  cols = [np.concatenate([p[i] for p in parts]) for i in range(len(Verdict._fields))]
  out = {}
  for j, name in enumerate(_EXACT):
    v = Verdict(*(c[:, j] for c in cols))
    out[name] = v._replace(applies=v.applies.astype(bool))
  return out


def tree_margins(tree: TreeInstance, seed: int = 0) -> dict:
  """{statement: {"lhs", "rhs", "margin", "slack", "applies", "holds", ...}} of G1–G4 on one tree.

  Statements on a policy use probe logits N(0, 1) (seeded); a non-finite value of an applicable
  statement is a failure with a ``message``.
  """
  rng = np.random.default_rng(seed)
  theta = tuple(on_device(rng.normal(0.0, 1.0, lv.reference.shape)) for lv in tree.levels)
  verdicts = _ALL_VERDICTS(tree, theta)
  return {s.name: verdict_row(s, v) for s, v in zip(TREE_STATEMENTS, verdicts)}


def looks_like_tree_file(obj) -> bool:
  """Whether a parsed JSON object is a tree file (a ``prompts`` list, no atomic ``data``)."""
  return isinstance(obj, dict) and isinstance(obj.get("prompts"), list) and "data" not in obj

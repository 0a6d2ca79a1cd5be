r"""The tree instance: prefix trees of tokens per prompt, stored level by level in padded buckets.

Level t (t = 0 … T−1) holds the internal nodes of depth t (prefixes without EOS, |s| = t) of every
prompt, in N_t rows of k child slots. Slot a of node s is

- an internal child s·a (``internal``; its row at level t+1 is ``child[s, a]``),
- a leaf (``leaf``: a = EOS or |s·a| = T; the leaf is the response y = s·a, of length t + 1), or
- absent (neither: ρ(a|s) = 0; the reference never emits it, so no policy on the tree does).

Every row at level t+1 has exactly one parent slot: ``parent[j]`` (its row at level t) and
``token[j]`` (the slot). The numbers live on the slots: ``reference`` = ρ(a|s) (positive exactly on
the support internal ∪ leaf, rows summing to 1), ``data`` = d(y|x) and ``reward`` = r(x, y) on leaf
slots (0 elsewhere). A :class:`TreeInstance` stacks the levels of |X| prompts ([X, N_t, k] arrays)
with prompt weights w_x and the KL coefficient β.

Padding (so that jit compiles once per bucket and vmap runs over prompts and instances):

- a padded row has ``node`` False and no slots;
- a padded level (beyond a tree's depth) has only padded rows;
- a padded prompt has weight 0 and the trivial tree (one leaf under the root, ρ = d = 1, r = 0).

The bucket of a tree is (|X|, k, (N_0, …, N_{T−1})). :func:`validate_tree` checks a concrete tree
and raises :class:`TreeError` with a one-line message naming the field and the rule.

References: THEORY.md part G (the setting).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..instance import DOMAIN

__all__ = ["TreeLevel", "TreeInstance", "TreeError", "SequenceRangeError", "SEQUENCE_RANGE",
           "LOG_TINY", "Bucket", "WEIGHT_TOL", "tree_bucket",
           "support", "validate_tree", "pad_tree", "stack_trees", "index_tree", "n_nodes",
           "n_leaves", "max_depth"]

WEIGHT_TOL = 1e-9  # weights, rows and the data of a prompt must sum to 1 within this (absolute)


class TreeError(ValueError):
  """A rule of the tree format is broken; the message is one line naming the field and the rule."""


class SequenceRangeError(TreeError):
  """A sequence's ρ(y) is below float64's normal range; ``where`` = (level, prompt, node, slot) of
  its last token and ``log_prob`` its log ρ(y), so that a reader can name the sequence."""

  def __init__(self, message: str, where: tuple[int, int, int, int], log_prob: float):
    super().__init__(message)
    self.where, self.log_prob = where, log_prob


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeLevel:
  """The internal nodes of one depth t (leading axes [..., N] for rows, [..., N, k] for slots).

  Attributes:
    node: [N] bool, True on real rows.
    parent: [N] int32, the parent's row at level t−1 (0 at level 0 and on padded rows).
    token: [N] int32, the slot of this node in its parent (0 at level 0 and on padded rows).
    child: [N, k] int32, the row at level t+1 of an internal slot (0 elsewhere).
    internal: [N, k] bool, slot is an internal node.
    leaf: [N, k] bool, slot is a leaf (a response of length t + 1).
    reference: [N, k] ρ(a|s): > 0 exactly on internal ∪ leaf, each real row sums to 1.
    data: [N, k] d(y|x) of the leaf y = s·a (0 off the leaves).
    reward: [N, k] r(x, y) of the leaf y = s·a (0 off the leaves).
  """

  node: jax.Array
  parent: jax.Array
  token: jax.Array
  child: jax.Array
  internal: jax.Array
  leaf: jax.Array
  reference: jax.Array
  data: jax.Array
  reward: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeInstance:
  """Prefix trees of |X| prompts with prompt weights and β (a pytree; batch with a leading axis).

  Attributes:
    prompt_weights: [X] w_x > 0 summing to 1 (padded prompts: 0).
    beta: [] the KL coefficient β > 0.
    levels: T levels; level t has arrays [X, N_t] and [X, N_t, k].
  """

  prompt_weights: jax.Array
  beta: jax.Array
  levels: tuple[TreeLevel, ...]

  @property
  def vocab_size(self) -> int:
    return int(self.levels[0].child.shape[-1])

  @property
  def depth(self) -> int:
    """The number of levels T (the bucket's maximum length)."""
    return len(self.levels)


class Bucket(NamedTuple):
  """A padded shape: prompts |X|, vocabulary k, rows per level (N_0, …, N_{T−1})."""

  prompts: int
  vocab: int
  nodes: tuple[int, ...]


def tree_bucket(tree: TreeInstance) -> Bucket:
  """The bucket of an unbatched tree.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> tree_bucket(tree)  # one prompt, two tokens, one node at each depth
    Bucket(prompts=1, vocab=2, nodes=(1, 1))
  """
  return Bucket(int(tree.prompt_weights.shape[-1]), tree.vocab_size,
                tuple(int(lv.node.shape[-1]) for lv in tree.levels))


def support(level: TreeLevel) -> jax.Array:
  """[..., N, k] bool: slots that exist (internal or leaf; ρ(a|s) > 0).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> support(tree.levels[0]).tolist()  # the root's two slots exist (a leaf and an internal node)
    [[[True, True]]]
  """
  return level.internal | level.leaf


def n_nodes(tree: TreeInstance) -> np.ndarray:
  """[X] number of internal nodes per prompt (unbatched tree).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> n_nodes(tree).tolist()  # the root and (1,)
    [2]
  """
  return sum(np.asarray(lv.node).sum(-1) for lv in tree.levels)


def n_leaves(tree: TreeInstance) -> np.ndarray:
  """[X] number of leaves (responses) per prompt (unbatched tree).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> n_leaves(tree).tolist()  # (0,), (1, 0), (1, 1)
    [3]
  """
  return sum(np.asarray(lv.leaf).sum((-2, -1)) for lv in tree.levels)


def max_depth(tree: TreeInstance) -> int:
  """The largest response length over the real prompts of an unbatched tree.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> max_depth(tree)
    2
  """
  real = np.asarray(tree.prompt_weights) > 0
  deepest = 0
  for t, lv in enumerate(tree.levels):
    if np.any(np.asarray(lv.leaf).any((-2, -1)) & real):
      deepest = t + 1
  return deepest


def _fmt(v: float) -> str:
  return f"{v:.10g}"


def _check_structure(levels, n_x: int) -> None:
  """Rows, slots and parent/child indices are consistent (see the module docstring)."""
  n_levels = len(levels)
  for t, lv in enumerate(levels):
    node, internal, leaf = (np.asarray(a) for a in (lv.node, lv.internal, lv.leaf))
    if t == 0 and not np.all(node[:, 0]):
      raise TreeError("level 0 row 0 (the root) must be a real node of every prompt")
    if np.any(internal & leaf):
      x, i, a = np.argwhere(internal & leaf)[0]
      raise TreeError(f"level {t} prompt {x} node {i} slot {a} is both internal and a leaf")
    if np.any((internal | leaf) & ~node[..., None]):
      x, i, a = np.argwhere((internal | leaf) & ~node[..., None])[0]
      raise TreeError(f"level {t} prompt {x} row {i} is padding but slot {a} exists")
    empty = node & ~(internal | leaf).any(-1)
    if np.any(empty):
      x, i = np.argwhere(empty)[0]
      raise TreeError(f"level {t} prompt {x} node {i} has no child (every node needs one)")
    if t == n_levels - 1 and np.any(internal):
      raise TreeError(f"level {t} is the last level but has internal slots")
    if t + 1 < n_levels:
      nxt = levels[t + 1]
      n_next = np.asarray(nxt.node).shape[-1]
      child = np.asarray(lv.child)
      if np.any(internal & ((child < 0) | (child >= n_next))):
        raise TreeError(f"level {t} child index out of range (level {t + 1} has {n_next} rows)")
      for x in range(n_x):
        xi, ai = np.nonzero(internal[x])
        rows = child[x, xi, ai]
        nn = np.asarray(nxt.node)[x]
        if len(set(rows.tolist())) != rows.size or not np.all(nn[rows]) or rows.size != nn.sum():
          raise TreeError(f"level {t + 1} prompt {x}: internal slots of level {t} must map one "
                          f"to one onto the real rows")
        if (np.any(np.asarray(nxt.parent)[x, rows] != xi)
            or np.any(np.asarray(nxt.token)[x, rows] != ai)):
          raise TreeError(f"level {t + 1} prompt {x}: parent/token do not point back to the "
                          f"internal slot")


LOG_TINY = float(np.log(np.finfo(np.float64).tiny))  # −708.4: the smallest normal float64's log
SEQUENCE_RANGE = (f"outside the valid domain (at least e^{LOG_TINY:.1f}, float64's smallest "
                  f"normal number)")


def _check_sequence_range(levels) -> None:
  """Every leaf's ρ(y) = Π_t ρ(y_t|y_<t) is a normal float64 (log ρ(y) ≥ LOG_TINY), the valid
  domain's rule for trees: the sequence-level sides of G1 and G3 hold the leaf set as an atomic
  instance, whose reference is a probability per sequence (a tree of top-4 tokens from a random
  full-size Qwen3 had leaves at ρ(y) = e^−717, which float64 holds as 0)."""
  above = None
  for t, lv in enumerate(levels):
    log_ref = np.log(np.where(np.asarray(support(lv)), np.asarray(lv.reference, np.float64), 1.0))
    if above is None:
      reach = np.zeros(log_ref.shape[:-1])
    else:
      parent, token = np.asarray(lv.parent), np.asarray(lv.token)
      flat = above.reshape(above.shape[0], -1)
      reach = np.take_along_axis(flat, parent * above.shape[-1] + token, axis=-1)
    seq = reach[..., None] + log_ref
    low = np.asarray(lv.leaf) & np.asarray(lv.node)[..., None] & (seq < LOG_TINY)
    if np.any(low):
      x, i, s = (int(v) for v in np.argwhere(low)[0])
      raise SequenceRangeError(
          f"reference level {t} prompt {x} node {i} slot {s}: the sequence's probability "
          f"rho(y) = e^{seq[x, i, s]:.1f} is {SEQUENCE_RANGE}", (t, x, i, s), float(seq[x, i, s]))
    above = np.where(np.asarray(lv.internal), seq, 0.0)


def validate_tree(tree: TreeInstance, tol: float = WEIGHT_TOL, padded: bool = False
                  ) -> TreeInstance:
  """Checks every rule of a concrete, unbatched tree instance.

  Rules: β a finite number in :data:`~nondecoupling.theory.instance.DOMAIN`; prompt weights > 0
  (≥ 0 if ``padded``) summing to 1; the structure of the module docstring; every value finite;
  ρ(a|s) > 0 exactly on the support and each real row summing to 1; data ≥ 0 only on leaves and
  summing to 1 per prompt; every sequence's ρ(y) at least float64's smallest normal number
  (:data:`LOG_TINY`); max |r|/β inside the domain.

  Args:
    tree: an unbatched tree.
    tol: absolute tolerance on sums.
    padded: whether weight-0 (padded) prompts are allowed.

  Returns:
    The tree, unchanged.

  Raises:
    TreeError: with a one-line message naming the field and the rule.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> validate_tree(tree) is tree
    True
  """
  beta = np.asarray(tree.beta, np.float64)
  if beta.shape != () or not np.isfinite(beta) or beta <= 0:
    raise TreeError(f"beta is {beta}, expected one finite number > 0")
  if not DOMAIN.beta_min <= beta <= DOMAIN.beta_max:
    raise TreeError(f"beta is {_fmt(float(beta))}, outside the valid domain "
                    f"[{DOMAIN.beta_min:g}, {DOMAIN.beta_max:g}]")
  w = np.asarray(tree.prompt_weights, np.float64)
  if w.ndim != 1 or w.size < 1 or not np.all(np.isfinite(w)):
    raise TreeError("prompt_weights must be a non-empty list of finite numbers")
  if np.any(w < 0) or (not padded and np.any(w <= 0)):
    i = int(np.argmax(w <= 0))
    raise TreeError(f"prompt_weights entry {i} is {_fmt(w[i])}, expected > 0")
  if abs(w.sum() - 1.0) > tol:
    raise TreeError(f"prompt_weights sum to {_fmt(w.sum())}, expected 1")
  _check_structure(tree.levels, w.size)
  data_total = np.zeros(w.size)
  r_max = 0.0
  for t, lv in enumerate(tree.levels):
    sup, leaf = np.asarray(support(lv)), np.asarray(lv.leaf)
    for name in ("reference", "data", "reward"):
      a = np.asarray(getattr(lv, name), np.float64)
      if not np.all(np.isfinite(a)):
        x, i, s = np.argwhere(~np.isfinite(a))[0]
        raise TreeError(f"{name} level {t} prompt {x} node {i} slot {s} is {a[x, i, s]}, "
                        f"expected a finite number")
    ref = np.asarray(lv.reference, np.float64)
    bad = (sup & (ref <= 0)) | (~sup & (ref != 0))
    if np.any(bad):
      x, i, s = np.argwhere(bad)[0]
      raise TreeError(f"reference level {t} prompt {x} node {i} slot {s} is "
                      f"{_fmt(ref[x, i, s])}, expected > 0 exactly on existing children")
    sums = ref.sum(-1)
    off = np.asarray(lv.node) & (np.abs(sums - 1.0) > tol)
    if np.any(off):
      x, i = np.argwhere(off)[0]
      raise TreeError(f"reference level {t} prompt {x} node {i} sums to {_fmt(sums[x, i])}, "
                      f"expected 1")
    d = np.asarray(lv.data, np.float64)
    if np.any(d < 0) or np.any((d != 0) & ~leaf):
      x, i, s = np.argwhere((d < 0) | ((d != 0) & ~leaf))[0]
      raise TreeError(f"data level {t} prompt {x} node {i} slot {s} is {_fmt(d[x, i, s])}, "
                      f"expected >= 0 and only on leaves")
    data_total += d.sum((-2, -1))
    r = np.asarray(lv.reward, np.float64)
    r_max = max(r_max, float(np.max(np.abs(np.where(leaf, r, 0.0)), initial=0.0)))
  off = np.flatnonzero(np.abs(data_total - 1.0) > tol)
  if off.size:
    raise TreeError(f"data of prompt {off[0]} sums to {_fmt(data_total[off[0]])}, expected 1")
  _check_sequence_range(tree.levels)
  if r_max / float(beta) > DOMAIN.reward_over_beta_max:
    raise TreeError(f"reward: max |r|/beta = {r_max / float(beta):.3g} is outside the valid "
                    f"domain (at most {DOMAIN.reward_over_beta_max:g})")
  return tree


def _pad_level(lv: TreeLevel, n_x: int, k: int, n: int, first: bool) -> TreeLevel:
  """Pads one level (numpy) to [n_x, n] rows and k slots; new prompts get the trivial tree."""
  x0, n0, k0 = np.asarray(lv.child).shape
  if n_x < x0 or n < n0 or k < k0:
    raise ValueError(f"cannot pad a level of {x0}x{n0}x{k0} down to {n_x}x{n}x{k}")

  def grow(a, fill, slots):
    a = np.asarray(a)
    shape = (n_x, n, k) if slots else (n_x, n)
    out = np.full(shape, fill, dtype=a.dtype)
    out[(slice(0, x0), slice(0, n0)) + ((slice(0, k0),) if slots else ())] = a
    return out

  out = {f.name: grow(getattr(lv, f.name), False if np.asarray(getattr(lv, f.name)).dtype == bool
                      else 0, getattr(lv, f.name).ndim == 3)
         for f in dataclasses.fields(TreeLevel)}
  if first and n_x > x0:  # trivial tree: the root with one leaf
    out["node"][x0:, 0] = True
    out["leaf"][x0:, 0, 0] = True
    out["reference"][x0:, 0, 0] = 1.0
    out["data"][x0:, 0, 0] = 1.0
  return TreeLevel(**out)


def _empty_level(n_x: int, k: int, n: int, like: TreeLevel) -> TreeLevel:
  dtype = np.asarray(like.reference).dtype
  z = lambda shape, dt: np.zeros(shape, dt)
  return TreeLevel(node=z((n_x, n), bool), parent=z((n_x, n), np.int32),
                   token=z((n_x, n), np.int32), child=z((n_x, n, k), np.int32),
                   internal=z((n_x, n, k), bool), leaf=z((n_x, n, k), bool),
                   reference=z((n_x, n, k), dtype), data=z((n_x, n, k), dtype),
                   reward=z((n_x, n, k), dtype))


def pad_tree(tree: TreeInstance, bucket: Bucket) -> TreeInstance:
  """Pads an unbatched tree to a bucket (more prompts, slots, rows or levels; see module doc).

  Works in NumPy (the padded arrays are NumPy arrays).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 1, {(): [0.5, 0.5]}, {(1,): 1.0}, lambda y: float(y[-1]))
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> tree_bucket(pad_tree(tree, Bucket(2, 3, (1, 4))))
    Bucket(prompts=2, vocab=3, nodes=(1, 4))
  """
  n_x, k = bucket.prompts, bucket.vocab
  if len(bucket.nodes) < tree.depth:
    raise ValueError(f"cannot pad {tree.depth} levels down to {len(bucket.nodes)}")
  levels = [_pad_level(lv, n_x, k, n, t == 0) for t, (lv, n) in
            enumerate(zip(tree.levels, bucket.nodes))]
  levels += [_empty_level(n_x, k, n, tree.levels[0]) for n in bucket.nodes[tree.depth:]]
  w = np.zeros(n_x, np.asarray(tree.prompt_weights).dtype)
  w[: tree.prompt_weights.shape[0]] = np.asarray(tree.prompt_weights)
  return TreeInstance(prompt_weights=w, beta=tree.beta, levels=tuple(levels))


def stack_trees(trees: list[TreeInstance]) -> TreeInstance:
  """Stacks same-bucket trees into one batch (leading axis on every array).

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> stack_trees([tree, tree]).beta.shape
    (2,)
  """
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def index_tree(batch: TreeInstance, i: Any) -> TreeInstance:
  """The i-th tree of a batch.

  Examples:
    >>> from nondecoupling.theory.tree.build import PromptTree, build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 0.5, (1, 1): 0.5},
    ...                lambda y: 1.0 if y == (1, 1) else 0.0)  # leaves (0,), (1, 0), (1, 1)
    >>> tree, _ = build_tree([p], [1.0], 1.0)
    >>> float(index_tree(stack_trees([tree, tree]), 1).beta)
    1.0
  """
  return jax.tree.map(lambda a: a[i], batch)

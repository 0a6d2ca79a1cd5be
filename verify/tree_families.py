"""Random tree families (NumPy, seeded, vectorised over trees).

Random trees (:func:`random_trees`): per tree a vocabulary of k ∈ [2, 8] tokens (EOS is token 0),
a depth T ∈ [1, 6] and 1–3 prompts; each node keeps each non-EOS token with a probability drawn
per tree, and EOS with probability 0.9 (a node always has a child); the reference gives EOS a
probability drawn per node (ragged EOS) and shares the rest over the other children. Data: a random
non-empty set of leaves with random masses. Everything is generated level by level for all trees at
once and padded to one bucket (:data:`TREE_BUCKET`), so a statement compiles once; children beyond
a level's bucket are dropped (the cap keeps trees of depth 6 small). Families differ in rewards and
β:

  uniform     r ∈ U[−1, 1], β log-uniform in [0.1, 10]
  verifier    r ∈ {0, 1} (about 30% correct), β in [0.05, 5]
  length      r = c₀ − c|y| (a length penalty), depth ≥ 2, β in [0.1, 10]
  small_beta  r ∈ U[−1, 1], β in [0.01, 0.1] (sharp tilts, |r|/β up to 100)
  large_beta  r ∈ U[−1, 1], β in [10, 1000]
  domain_beta r ∈ U[−1, 1], β log-uniform in [1e−4, 1e4] (the valid domain's β range, cut where
              |r|/β would exceed 1e4: the soft values stay far inside |r|/β ≤ 1e6)
  dense       every token kept (complete trees up to the bucket), r ∈ U[−1, 1], β in [0.1, 10]

:func:`complete_tree` builds the complete tree (every token at every node) of a given k and T, the
benchmark's shape. Hypothesis strategies of small tree files are in :mod:`.tree_strategies`.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from ..theory.tree.instance import Bucket, TreeInstance, TreeLevel, index_tree
from .host_arrays import on_device

__all__ = ["TREE_BUCKET", "SMALL_BUCKET", "TREE_FAMILIES", "EOS", "random_trees", "sample_trees",
           "probe_logits", "complete_tree", "concat_batches", "TOKENS"]

TREE_BUCKET = Bucket(prompts=3, vocab=8, nodes=(1, 7, 16, 24, 24, 24))
SMALL_BUCKET = Bucket(prompts=2, vocab=4, nodes=(1, 3, 9))  # what tree_strategies.tree_strategy() draws fits
EOS = 0
TOKENS = ("<eos>", "a", "b", "c", "d", "e", "f", "g")


def _structure(rng, k, depth, keep, bucket: Bucket, eos_absent):
  """Per level: dicts of numpy arrays [n, X, N(, k)] of a random tree structure and reference."""
  n, k_max, sizes, n_x = k.shape[0], bucket.vocab, bucket.nodes, bucket.prompts
  n_levels = len(sizes)
  slot = np.arange(k_max)
  in_vocab = (slot[None, :] < k[:, None])[:, None, None, :]
  node = np.zeros((n, n_x, sizes[0]), bool)
  node[:, :, 0] = True
  parent = np.zeros((n, n_x, sizes[0]), np.int32)
  token = np.zeros((n, n_x, sizes[0]), np.int32)
  levels = []
  for t, size in enumerate(sizes):
    shape = (n, n_x, size, k_max)
    other = (rng.uniform(size=shape) < keep[:, None, None, None]) & (slot != EOS)
    eos_here = rng.uniform(size=shape[:3]) >= eos_absent
    exists = node[..., None] & in_vocab & (other | ((slot == EOS) & eos_here[..., None]))
    last = ((t == depth - 1) | (t == n_levels - 1))[:, None, None, None]
    cand = exists & (slot != EOS) & ~last
    internal = np.zeros(shape, bool)
    child = np.zeros(shape, np.int32)
    nxt = {}
    if t + 1 < n_levels:
      cap = sizes[t + 1]
      flat = cand.reshape(n, n_x, -1)
      rank = np.cumsum(flat, axis=-1) - 1
      kept = flat & (rank < cap)
      exists &= ~(flat & ~kept).reshape(shape)  # dropped: beyond the next level's bucket
      internal = kept.reshape(shape)
      child = np.where(internal, rank.reshape(shape), 0).astype(np.int32)
      b, x, f = np.nonzero(kept)
      nxt["node"] = np.arange(cap)[None, None, :] < kept.sum(-1)[..., None]
      nxt["parent"] = np.zeros((n, n_x, cap), np.int32)
      nxt["token"] = np.zeros((n, n_x, cap), np.int32)
      nxt["parent"][b, x, rank[b, x, f]] = f // k_max
      nxt["token"][b, x, rank[b, x, f]] = f % k_max
    exists[..., EOS] |= node & ~exists.any(-1)  # every node needs a child
    leaf = exists & ~internal
    u = np.where(exists & (slot != EOS), rng.uniform(0.05, 1.0, size=shape), 0.0)
    has_other = u.sum(-1) > 0
    p_eos = np.where(exists[..., EOS], np.where(has_other, rng.uniform(0.05, 0.8, shape[:3]),
                                                1.0), 0.0)
    ref = (1.0 - p_eos)[..., None] * u / np.where(has_other, u.sum(-1), 1.0)[..., None]
    ref[..., EOS] = p_eos
    levels.append(dict(node=node, parent=parent, token=token, child=child, internal=internal,
                       leaf=leaf, reference=np.where(exists, ref, 0.0)))
    if nxt:
      node, parent, token = nxt["node"], nxt["parent"], nxt["token"]
  return levels


def _data(rng, levels):
  """A random non-empty set of leaves with random masses per prompt, normalised."""
  leaf = np.concatenate([lv["leaf"].reshape(lv["leaf"].shape[:2] + (-1,)) for lv in levels], -1)
  score = rng.uniform(size=leaf.shape)
  forced = np.zeros(leaf.shape, bool)
  pick = np.argmax(np.where(leaf, score, -1.0), axis=-1)
  np.put_along_axis(forced, pick[..., None], True, axis=-1)
  mass = np.where(leaf & ((rng.uniform(size=leaf.shape) < 0.5) | forced),
                  rng.uniform(0.1, 1.0, size=leaf.shape), 0.0)
  mass /= mass.sum(-1, keepdims=True)
  out, start = [], 0
  for lv in levels:
    size = lv["leaf"][0, 0].size
    out.append(mass[..., start:start + size].reshape(lv["leaf"].shape))
    start += size
  return out


def random_trees(rng, n: int, bucket: Bucket = TREE_BUCKET, rewards: str = "uniform",
                 beta_range=(0.1, 10.0), keep_range=(0.3, 0.9), k=None, depth=None,
                 prompts=None, eos_absent: float = 0.1, on_host: bool = False) -> TreeInstance:
  """n random trees padded to ``bucket``, as one batched TreeInstance [n, X, ...].

  Args:
    rng: numpy Generator.
    n: number of trees.
    bucket: the padded shape (vocabulary, prompts, rows per level).
    rewards: "uniform", "verifier" or "length" (see the module docstring).
    beta_range: β log-uniform in this range.
    keep_range: per tree, the probability of keeping each non-EOS token at a node.
    k, depth, prompts: [n] int arrays fixing vocabulary sizes, depths, prompt counts (default:
      uniform in [2, bucket.vocab], [1, levels], [1, bucket.prompts]).
    eos_absent: probability that a node has no EOS child.
    on_host: NumPy arrays instead of device arrays (for a caller that batches them itself).
  """
  put = _host if on_host else on_device
  n_levels = len(bucket.nodes)
  k = rng.integers(2, bucket.vocab + 1, n) if k is None else np.asarray(k)
  depth = rng.integers(1, n_levels + 1, n) if depth is None else np.asarray(depth)
  prompts = rng.integers(1, bucket.prompts + 1, n) if prompts is None else np.asarray(prompts)
  keep = rng.uniform(*keep_range, n)
  levels = _structure(rng, k, depth, keep, bucket, eos_absent)
  data = _data(rng, levels)
  beta = np.exp(rng.uniform(np.log(beta_range[0]), np.log(beta_range[1]), n))
  base, slope = rng.uniform(0.0, 1.0, n), rng.uniform(0.05, 0.3, n)
  out = []
  for t, (lv, d) in enumerate(zip(levels, data)):
    shape = lv["leaf"].shape
    if rewards == "uniform":
      r = rng.uniform(-1.0, 1.0, shape)
    elif rewards == "verifier":
      r = (rng.uniform(size=shape) < 0.3).astype(float)
    elif rewards == "length":
      r = np.broadcast_to((base - slope * (t + 1))[:, None, None, None], shape)
    else:
      raise ValueError(f"rewards is {rewards!r}, expected uniform, verifier or length")
    f = lambda a: put(a, np.float64)
    i = lambda a: put(a, np.int32)
    b = lambda a: put(a, np.bool_)
    out.append(TreeLevel(node=b(lv["node"]), parent=i(lv["parent"]),
                         token=i(lv["token"]), child=i(lv["child"]),
                         internal=b(lv["internal"]), leaf=b(lv["leaf"]),
                         reference=f(lv["reference"]), data=f(d),
                         reward=f(np.where(lv["leaf"], r, 0.0))))
  w = rng.uniform(0.1, 1.0, (n, bucket.prompts)) * (np.arange(bucket.prompts) < prompts[:, None])
  w /= w.sum(-1, keepdims=True)
  return TreeInstance(prompt_weights=put(w, np.float64), beta=put(beta, np.float64),
                      levels=tuple(out))


def _host(a, dtype) -> np.ndarray:
  return np.ascontiguousarray(a, dtype)


TREE_FAMILIES: dict[str, Callable] = {
    "uniform": lambda rng, n, b, **kw: random_trees(rng, n, b, **kw),
    "verifier": lambda rng, n, b, **kw: random_trees(rng, n, b, "verifier", (0.05, 5.0), **kw),
    "length": lambda rng, n, b, **kw: random_trees(rng, n, b, "length",
                                                   depth=rng.integers(2, len(b.nodes) + 1, n),
                                                   **kw),
    "small_beta": lambda rng, n, b, **kw: random_trees(rng, n, b, beta_range=(0.01, 0.1), **kw),
    "large_beta": lambda rng, n, b, **kw: random_trees(rng, n, b, beta_range=(10.0, 1000.0),
                                                       **kw),
    "domain_beta": lambda rng, n, b, **kw: random_trees(rng, n, b, beta_range=(1e-4, 1e4), **kw),
    "dense": lambda rng, n, b, **kw: random_trees(rng, n, b, keep_range=(1.0, 1.0),
                                                  eos_absent=0.0, **kw),
}


def probe_logits(rng, trees: TreeInstance, scale: float = 2.0, on_host: bool = False) -> tuple:
  """Per-level probe logits N(0, scale²) of the trees' shapes (entries off the support inert;
  ``on_host``: NumPy arrays)."""
  put = _host if on_host else on_device
  return tuple(put(rng.normal(0.0, scale, lv.reference.shape), np.float64)
               for lv in trees.levels)


def concat_batches(batches: list, on_host: bool = False):
  """Batches (pytrees of arrays [B_i, ...] of one structure) joined along axis 0 on the host and
  put on the device once (``on_host``: not put): no compiled concatenation (a warm process would
  otherwise lower and load one program per array shape)."""
  put = np.asarray if on_host else on_device
  join = lambda *xs: put(np.concatenate([np.asarray(x) for x in xs], axis=0))
  return jax.tree.map(join, *batches) if len(batches) > 1 else batches[0]


def sample_trees(n_total: int, seed: int, bucket: Bucket = TREE_BUCKET,
                 on_host: bool = False) -> list:
  """n_total trees split evenly over the families: [(family, trees, probe logits), ...]
  (``on_host``: NumPy arrays; `verify`'s sweeps split them into chunks and place each chunk on
  the devices themselves: putting every array of every family on the device first, then
  concatenating them on the host, took 0.8 of the 0.9 s of drawing 2,688 trees)."""
  names = list(TREE_FAMILIES)
  per = [n_total // len(names) + (i < n_total % len(names)) for i in range(len(names))]
  out = []
  for name, m in zip(names, per):
    if m > 0:
      rng = np.random.default_rng([seed, names.index(name)])
      trees = TREE_FAMILIES[name](rng, m, bucket, on_host=on_host)
      out.append((name, trees, probe_logits(rng, trees, on_host=on_host)))
  return out


def complete_tree(k: int, depth: int, prompts: int, seed: int = 0) -> TreeInstance:
  """The complete tree (every token at every node, EOS included) of k tokens and depth T.

  Level t has (k − 1)^t internal nodes; rewards U[−1, 1], β = 1, ragged EOS probabilities.
  """
  sizes = tuple((k - 1) ** t for t in range(depth))
  rng = np.random.default_rng(seed)
  batch = random_trees(rng, 1, Bucket(prompts, k, sizes), keep_range=(1.0, 1.0),
                       beta_range=(1.0, 1.0), k=[k], depth=[depth], prompts=[prompts],
                       eos_absent=0.0)
  return index_tree(batch, 0)

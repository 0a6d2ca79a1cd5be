r"""Host-side prompt trees (NumPy, Python) and their conversion to the padded level arrays.

A :class:`PromptTree` describes one prompt: the vocabulary size k and the index of EOS, the maximum
length T, the reference as per-node conditional rows (``prefix -> [k] row``; a table of sequence
probabilities converts with :func:`conditionals_from_sequences`), the SFT data as a distribution on
responses, and the reward as a function of the token sequence (:mod:`.rewards`).

A response is a token sequence y with 1 ≤ |y| ≤ T that contains EOS at most as its last token and
ends at EOS or has length T (:func:`is_response`). :func:`build_tree` walks each prompt's tree from
the root (breadth first, slots in token order), keeps the children with ρ(a|s) > 0, and fills the
arrays of :mod:`.instance`; it returns, per prompt, the map prefix -> (level, row) of the internal
nodes it created, so that callers can address nodes by their prefixes.

References: THEORY.md part G (the setting).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from .instance import WEIGHT_TOL, Bucket, TreeError, TreeInstance, TreeLevel, pad_tree

__all__ = ["PromptTree", "is_response", "conditionals_from_sequences", "build_tree",
           "prefix_of", "NodeIndex"]

NodeIndex = dict  # prefix (tuple of token ids) -> (level, row)


@dataclasses.dataclass(frozen=True)
class PromptTree:
  """One prompt's tree, host side.

  Attributes:
    vocab_size: k ≥ 2.
    eos: the index of EOS in the vocabulary.
    max_length: T ≥ 1.
    reference: prefix (tuple of token ids) -> [k] row ρ(·|s), for every node reachable under ρ.
    data: response (tuple of token ids) -> d(y|x); sums to 1, every response on the tree.
    reward: function of a response (tuple of token ids) -> r(x, y).
  """

  vocab_size: int
  eos: int
  max_length: int
  reference: Mapping[tuple, Sequence[float]]
  data: Mapping[tuple, float]
  reward: Callable[[tuple], float]


def is_response(seq: Sequence[int], eos: int, max_length: int) -> bool:
  """Whether ``seq`` is a leaf: 1 ≤ |y| ≤ T, EOS only last, and ending at EOS or at length T.

  Examples:
    >>> is_response((1, 0), eos=0, max_length=3), is_response((1, 1), eos=0, max_length=3)
    (True, False)
  """
  seq = tuple(seq)
  if not 1 <= len(seq) <= max_length or eos in seq[:-1]:
    return False
  return seq[-1] == eos or len(seq) == max_length


def conditionals_from_sequences(table: Mapping[tuple, float], vocab_size: int, eos: int,
                                max_length: int, tol: float = WEIGHT_TOL) -> dict:
  r"""Per-node conditionals ρ(a|s) = ρ(s·a·…)/ρ(s·…) from a table of sequence probabilities.

  ρ(s·…) = Σ_{y ⊒ s} ρ(y) is the mass of the responses through prefix s.

  Args:
    table: response -> probability (≥ 0, summing to 1; unlisted responses have 0).
    vocab_size, eos, max_length: the tree's k, EOS index and T.
    tol: absolute tolerance on the sum.

  Returns:
    prefix -> [k] numpy row, for every prefix of positive mass.

  Raises:
    TreeError: a sequence is not a response, a probability is negative, or they do not sum to 1.

  Examples:
    >>> rows = conditionals_from_sequences({(0,): 0.5, (1, 0): 0.25, (1, 1): 0.25}, 2, 0, 2)
    >>> {s: r.tolist() for s, r in rows.items()}
    {(): [0.5, 0.5], (1,): [0.5, 0.5]}
  """
  mass: dict = {}
  total = 0.0
  for seq, p in table.items():
    seq = tuple(int(a) for a in seq)
    if not is_response(seq, eos, max_length) or max(seq) >= vocab_size or min(seq) < 0:
      raise TreeError(f"sequence {list(seq)} is not a response (it must end at EOS or at length "
                      f"{max_length}, with EOS only last)")
    if not np.isfinite(p) or p < 0:
      raise TreeError(f"sequence {list(seq)} has probability {p}, expected a finite number >= 0")
    total += p
    for t in range(len(seq)):
      edge = mass.setdefault(seq[:t], np.zeros(vocab_size))
      edge[seq[t]] += p
  if abs(total - 1.0) > tol:
    raise TreeError(f"sequence probabilities sum to {total:.10g}, expected 1")
  return {s: row / row.sum() for s, row in mass.items() if row.sum() > 0}


def prefix_of(index: NodeIndex) -> dict:
  """The inverse of a node index: (level, row) -> prefix.

  Examples:
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0}, lambda y: 0.0)
    >>> _, index = build_tree([p], [1.0], 1.0)
    >>> prefix_of(index[0])  # (level, row) -> prefix
    {(0, 0): (), (1, 0): (1,)}
  """
  return {v: s for s, v in index.items()}


def _walk(p: PromptTree):
  """Breadth-first walk of one prompt: levels of prefixes and their rows (numpy)."""
  if p.vocab_size < 2 or not 0 <= p.eos < p.vocab_size or p.max_length < 1:
    raise TreeError(f"vocabulary of {p.vocab_size} tokens with EOS {p.eos} and maximum length "
                    f"{p.max_length}: expected k >= 2, EOS among them and T >= 1")
  levels, frontier = [], [()]
  while frontier:
    rows = []
    for s in frontier:
      if s not in p.reference:
        raise TreeError(f"reference has no row for node {list(s)}, which is reachable")
      row = np.asarray(p.reference[s], np.float64)
      if row.shape != (p.vocab_size,):
        raise TreeError(f"reference row of node {list(s)} has shape {list(row.shape)}, "
                        f"expected [{p.vocab_size}]")
      if not np.all(np.isfinite(row)) or np.any(row < 0):
        raise TreeError(f"reference row of node {list(s)} has an entry that is negative or not "
                        f"finite")
      if abs(row.sum() - 1.0) > WEIGHT_TOL:
        raise TreeError(f"reference row of node {list(s)} sums to {row.sum():.10g}, expected 1")
      rows.append(row)
    levels.append((frontier, rows))
    frontier = [s + (a,) for s, row in zip(frontier, rows) for a in range(p.vocab_size)
                if row[a] > 0 and a != p.eos and len(s) + 1 < p.max_length]
  return levels


def build_tree(prompts: Sequence[PromptTree], prompt_weights, beta, bucket: Bucket | None = None,
               dtype=np.float64) -> tuple[TreeInstance, list[NodeIndex]]:
  """The padded level arrays of a list of prompt trees.

  Args:
    prompts: one :class:`PromptTree` per prompt.
    prompt_weights: [X] prompt weights.
    beta: the KL coefficient.
    bucket: pad to this bucket (default: the smallest that fits).
    dtype: float dtype of the numbers.

  Returns:
    (tree, index): the unvalidated :class:`TreeInstance` (call ``validate_tree`` on user input;
    its arrays are NumPy arrays, which JAX takes as they are) and, per prompt, the map prefix ->
    (level, row) of its internal nodes.

  Raises:
    TreeError: a reachable node without a valid row, a data response off the tree (not a
      response, or reference probability 0), or data not summing to 1.

  Examples:
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(1, 0): 1.0},
    ...                lambda y: float(len(y)))
    >>> tree, index = build_tree([p], [1.0], 0.5)
    >>> index, tree.levels[1].leaf[0].tolist()
    ([{(): (0, 0), (1,): (1, 0)}], [[True, True]])
  """
  walks = [_walk(p) for p in prompts]
  n_x, k = len(prompts), max(p.vocab_size for p in prompts)
  depth = max(len(w) for w in walks)
  sizes = tuple(max(len(w[t][0]) if t < len(w) else 1 for w in walks) for t in range(depth))
  f = lambda shape, dt=np.float64: np.zeros(shape, dt)
  arrays = [dict(node=f((n_x, n), bool), parent=f((n_x, n), np.int32),
                 token=f((n_x, n), np.int32), child=f((n_x, n, k), np.int32),
                 internal=f((n_x, n, k), bool), leaf=f((n_x, n, k), bool),
                 reference=f((n_x, n, k)), data=f((n_x, n, k)), reward=f((n_x, n, k)))
            for n in sizes]
  indices = []
  for x, (p, walk) in enumerate(zip(prompts, walks)):
    index = {s: (t, i) for t, (frontier, _) in enumerate(walk) for i, s in enumerate(frontier)}
    seen = {}
    for t, (frontier, rows) in enumerate(walk):
      a_t = arrays[t]
      for i, (s, row) in enumerate(zip(frontier, rows)):
        a_t["node"][x, i] = True
        if t > 0:
          a_t["parent"][x, i], a_t["token"][x, i] = index[s[:-1]][1], s[-1]
        for a in np.flatnonzero(row > 0):
          y = s + (int(a),)
          a_t["reference"][x, i, a] = row[a]
          if y in index:
            a_t["internal"][x, i, a], a_t["child"][x, i, a] = True, index[y][1]
          else:
            a_t["leaf"][x, i, a] = True
            a_t["reward"][x, i, a] = p.reward(y)
            seen[y] = (t, i, a)
    total = 0.0
    for y, mass in p.data.items():
      y = tuple(int(a) for a in y)
      if y not in seen:
        raise TreeError(f"data sequence {list(y)} of prompt {x} is off the tree (not a response, "
                        f"or reference probability 0)")
      if not np.isfinite(mass) or mass < 0:
        raise TreeError(f"data sequence {list(y)} of prompt {x} has mass {mass}, expected >= 0")
      t, i, a = seen[y]
      arrays[t]["data"][x, i, a] += mass
      total += mass
    if abs(total - 1.0) > WEIGHT_TOL:
      raise TreeError(f"data of prompt {x} sums to {total:.10g}, expected 1")
    indices.append(index)
  levels = tuple(TreeLevel(**{name: a.astype(dtype) if a.dtype == np.float64 else a
                              for name, a in lv.items()}) for lv in arrays)
  tree = TreeInstance(prompt_weights=np.asarray(prompt_weights, dtype),
                      beta=np.asarray(beta, dtype), levels=levels)
  if bucket is not None:
    tree = pad_tree(tree, bucket)
  return tree, indices

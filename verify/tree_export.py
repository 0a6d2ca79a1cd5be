"""A concrete tree instance written back as a tree file (what ``check FILE`` reads).

``verify`` sweeps random trees (:mod:`.tree_families`); when one breaks a statement, its
counterexample is this file, so that ``nondecoupling check`` re-checks it on its own.
"""

from __future__ import annotations

import numpy as np

from ..theory.tree.build import PromptTree
from ..theory.tree.instance import TreeInstance
from .tree_io import tree_from_dict, tree_to_dict

__all__ = ["prompt_trees", "tree_instance_to_dict"]


def _vocab(k: int, eos: int) -> list[str]:
  return ["<eos>" if a == eos else f"t{a}" for a in range(k)]


def prompt_trees(tree: TreeInstance, eos: int = 0) -> tuple[list[PromptTree], list[float]]:
  """The host-side prompt trees of an unbatched tree and their weights (padded prompts dropped).

  Args:
    tree: an unbatched, concrete tree (levels [X, N_t, k]).
    eos: the slot of EOS (0 in every tree :mod:`.tree_families` draws).

  Returns:
    (one :class:`PromptTree` per prompt of positive weight, those weights).
  """
  weights = np.asarray(tree.prompt_weights, np.float64)
  levels = [{f: np.asarray(getattr(lv, f)) for f in ("node", "parent", "token", "internal",
                                                      "leaf", "reference", "data", "reward")}
            for lv in tree.levels]
  k = int(levels[0]["reference"].shape[-1])
  prompts, kept = [], []
  for x in np.flatnonzero(weights > 0):
    reference, data, reward, prefixes = {}, {}, {}, []
    for t, lv in enumerate(levels):
      rows = np.flatnonzero(lv["node"][x])
      if rows.size == 0:
        break
      here = {}
      for j in rows:
        s = () if t == 0 else prefixes[t - 1][int(lv["parent"][x, j])] + (int(lv["token"][x, j]),)
        here[int(j)] = s
        reference[s] = [float(v) for v in lv["reference"][x, j]]
        for a in np.flatnonzero(lv["leaf"][x, j]):
          y = s + (int(a),)
          reward[y] = float(lv["reward"][x, j, a])
          if lv["data"][x, j, a] > 0:
            data[y] = float(lv["data"][x, j, a])
      prefixes.append(here)
    prompts.append(PromptTree(k, eos, len(prefixes), reference, data,
                              lambda y, table=reward: table.get(tuple(y), 0.0)))
    kept.append(float(weights[x]))
  return prompts, kept


def tree_instance_to_dict(tree: TreeInstance, eos: int = 0) -> dict:
  """The tree-file object of an unbatched tree (validated by reading it back).

  Args:
    tree: an unbatched, concrete tree.
    eos: the slot of EOS.

  Returns:
    the JSON object of :mod:`.tree_io` (tokens named ``<eos>``, ``t1``, ``t2``, ...; the reward
    as a table over the leaves).

  Examples:
    >>> from nondecoupling.theory.tree.build import build_tree
    >>> p = PromptTree(2, 0, 2, {(): [0.5, 0.5], (1,): [0.5, 0.5]}, {(0,): 1.0},
    ...                lambda y: float(y[-1] == 0))
    >>> tree, _ = build_tree([p], [1.0], 0.5)
    >>> obj = tree_instance_to_dict(tree)
    >>> obj["prompts"][0]["reward"]["table"][:2]
    [{'tokens': ['<eos>'], 'value': 1.0}, {'tokens': ['t1', '<eos>'], 'value': 1.0}]
  """
  prompts, weights = prompt_trees(tree, eos)
  total = sum(weights)
  vocabs = [_vocab(p.vocab_size, eos) for p in prompts]
  obj = tree_to_dict(prompts, vocabs, [w / total for w in weights],
                     float(np.asarray(tree.beta)))
  tree_from_dict(obj)
  return obj

"""Hypothesis strategies of small tree files, for property tests and counterexample searches.

:func:`tree_strategy` draws tree-file objects (dicts as :mod:`.tree_io` reads them) with every
reward rule and both reference forms. Kept apart from :mod:`.tree_families` so that what only
samples trees does not import Hypothesis.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .tree_families import EOS, TOKENS

__all__ = ["tree_strategy"]


# Decorated once, here: Hypothesis reads a composite's source when it is made (inspect), which
# per drawn prompt had cost a third of `verify`'s whole search.
@st.composite
def _prompt_strategy(draw, k: int, t_max: int, reward_kinds, tiny: bool):
  """One prompt's tree (reference, data, reward) with vocabulary size k and maximum length."""
  mass = st.floats(0.05, 1.0, allow_nan=False, width=64)
  if tiny:
    mass = st.one_of(mass, st.just(1e-6))
  vocab = list(TOKENS[:k])
  rows, leaves, frontier = {}, [], [()]
  while frontier:
    s = frontier.pop(0)
    keep = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    if not any(keep):
      keep[draw(st.integers(0, k - 1))] = True
    m = np.array([draw(mass) if keep[a] else 0.0 for a in range(k)])
    rows[s] = m / m.sum()
    for a in np.flatnonzero(m > 0):
      y = s + (int(a),)
      (leaves if a == EOS or len(y) == t_max else frontier).append(y)
  tok = lambda y: [vocab[a] for a in y]
  if draw(st.booleans()):
    reference = {"nodes": [{"prefix": tok(s), "probs": {vocab[a]: float(p) for a, p in
                                                        enumerate(row) if p > 0}}
                           for s, row in rows.items()]}
  else:
    probs = [float(np.prod([rows[y[:i]][y[i]] for i in range(len(y))])) for y in leaves]
    total = sum(probs)
    reference = {"sequences": [{"tokens": tok(y), "p": p / total}
                               for y, p in zip(leaves, probs)]}
  picks = draw(st.lists(st.integers(0, len(leaves) - 1), min_size=1, max_size=4))
  data = [{"tokens": tok(leaves[i]), "weight": draw(st.floats(0.1, 5.0, width=64))}
          for i in picks]
  kind = draw(st.sampled_from(reward_kinds))
  value = st.floats(-2.0, 2.0, allow_nan=False, width=64)
  if kind == "table":
    chosen = sorted(set(draw(st.lists(st.integers(0, len(leaves) - 1), max_size=len(leaves)))))
    reward = {"table": [{"tokens": tok(leaves[i]), "value": draw(value)} for i in chosen],
              "default": draw(value)}
  elif kind == "exact_match":
    reward = {"rule": "exact_match", "correct": draw(value), "incorrect": draw(value)}
  elif kind == "final_answer":
    reward = {"rule": "final_answer", "answer": vocab[draw(st.integers(1, k - 1))]}
  else:
    reward = {"rule": "length_penalty", "base": draw(value),
              "per_token": draw(st.floats(0.0, 0.5, width=64))}
  return {"reference": reference, "data": data, "reward": reward}


def tree_strategy(max_prompts: int = 2, max_vocab: int = 4, max_length: int = 3,
                  reward_kinds=("table", "exact_match", "final_answer", "length_penalty"),
                  beta_range=(0.05, 20.0), tiny: bool = True):
  """Hypothesis strategy of small valid tree files (dicts as :mod:`.tree_io` reads them).

  The defaults fit :data:`SMALL_BUCKET`. Every prompt shares the vocabulary ``<eos>, a, b, …``
  (EOS first) and the maximum length; supports, masses (occasionally 1e-6), data, rewards (every
  rule) and the reference's form (per node or as sequence probabilities) are drawn.
  """
  @st.composite
  def build(draw):
    k = draw(st.integers(2, max_vocab))
    t_max = draw(st.integers(1, max_length))
    n_x = draw(st.integers(1, max_prompts))
    prompts = [draw(_prompt_strategy(k, t_max, reward_kinds, tiny)) for _ in range(n_x)]
    w = np.array([draw(st.floats(0.1, 1.0, width=64)) for _ in range(n_x)])
    beta = draw(st.floats(*beta_range, allow_nan=False, width=64))
    return {"beta": beta, "vocab": list(TOKENS[:k]), "eos": TOKENS[EOS], "max_length": t_max,
            "prompt_weights": (w / w.sum()).tolist(), "prompts": prompts}

  return build()

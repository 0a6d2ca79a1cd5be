"""The G5 statements (length normalisation in group policy gradients, this project's) for `verify`.

:data:`TREE_GROUP_STATEMENTS` is a tuple of :class:`~.statement.Statement` with batched ``check``
functions, built like :data:`~.tree_checks.TREE_STATEMENTS`: ``check(batch, key)`` receives the
sweep's atomic batch (only its size is used) and the key, draws as many random trees (every family
below in equal parts, one bucket, deterministic in the key and the batch) with probe logits
N(0, 2²), evaluates the statement with jit + vmap (one compile per statement) and returns a
:class:`~nondecoupling.theory.verdict.Verdict` of [B] arrays.

The exact group field enumerates multisets of reward levels, so the families keep few levels:

  verifier         r ∈ {0, 1}, ragged lengths
  length           r = c₀ − c|y| (at most T levels), depth ≥ 2
  constant_length  r ∈ {0, 1}, complete trees without EOS (every response of length T), where
                   the constant-length statement applies

and every statement enumerates :data:`GROUP_LEVELS` levels with groups of
:data:`~nondecoupling.theory.statements.lengths.STATEMENT_GROUP`.
"""

from __future__ import annotations

import functools
import zlib

import jax
import numpy as np

from ..theory.statements import lengths
from ..theory.tree.instance import Bucket, TreeInstance
from ..theory.verdict import Verdict
from .exported_programs import exported_jit
from .statement import Statement
from .stored_programs import program_name
from .tree_checks import padded_batch
from .tree_families import concat_batches, probe_logits, random_trees

__all__ = ["TREE_GROUP_STATEMENTS", "GROUP_BUCKET", "GROUP_LEVELS", "GROUP_FAMILIES",
           "group_trees_for_batch"]

GROUP_BUCKET = Bucket(prompts=2, vocab=3, nodes=(1, 2, 4, 8))
GROUP_MIN_BATCH = 4  # every batch padded to a power of two ≥ this: one compile per statement
GROUP_LEVELS = 4  # ≥ the distinct rewards of every family (the length family has ≤ T = 4)

GROUP_FAMILIES = {
    "verifier": lambda rng, n, b: random_trees(rng, n, b, "verifier", (0.05, 5.0)),
    "length": lambda rng, n, b: random_trees(rng, n, b, "length",
                                             depth=rng.integers(2, len(b.nodes) + 1, n)),
    "constant_length": lambda rng, n, b: random_trees(rng, n, b, "verifier", (0.05, 5.0),
                                                      keep_range=(1.0, 1.0), eos_absent=1.0),
}


@functools.lru_cache(maxsize=8)
def _trees(n: int, seed: int) -> tuple[TreeInstance, tuple]:
  names = list(GROUP_FAMILIES)
  per = [n // len(names) + (i < n % len(names)) for i in range(len(names))]
  parts = []
  for i, (name, m) in enumerate(zip(names, per)):
    if m > 0:
      rng = np.random.default_rng([seed, i])
      trees = GROUP_FAMILIES[name](rng, m, GROUP_BUCKET)
      parts.append((trees, probe_logits(rng, trees)))
  return concat_batches([p[0] for p in parts]), concat_batches([p[1] for p in parts])


def group_trees_for_batch(batch, key) -> tuple[TreeInstance, tuple]:
  """As many random trees (and probe logits) as the batch has instances, deterministic in both."""
  n = int(np.asarray(batch.prompt_weights).shape[0])
  digest = zlib.crc32(np.asarray(jax.random.key_data(key)).tobytes()
                      + np.asarray(batch.beta, np.float64).tobytes())
  return _trees(n, int(digest))


@functools.lru_cache(maxsize=None)
def _compiled(fn):
  batched = jax.vmap(functools.partial(fn, levels=GROUP_LEVELS))
  name = program_name(fn)
  if name is None:
    return jax.jit(batched)
  return exported_jit(batched, f"{name}[vmap, levels={GROUP_LEVELS!r}]")


def _checker(fn):
  def check(batch, key) -> Verdict:
    trees_probes = group_trees_for_batch(batch, key)
    (trees, probes), n = padded_batch(trees_probes, GROUP_MIN_BATCH)
    return jax.tree.map(lambda a: a[:n], _compiled(fn)(trees, probes))
  return check


def _s(name, title, fn):
  return Statement(name=name, title=title, source="ours", expected="holds", kind="identity",
                   fn=None, uses_probe=True, check=_checker(fn), instances=group_trees_for_batch)


TREE_GROUP_STATEMENTS: tuple[Statement, ...] = (
    _s("G5 sequence_sum_is_scaled_gradient",
       "no std, n = 1/G: E Σ Â_i n_i ∇log π(o_i) = (G−1)/G ∇J",
       lengths.sequence_sum_is_scaled_gradient),
    _s("G5 sequence_mean_is_length_weighted_gradient",
       "GRPO n = 1/(G|y|), no std: field = (G−1)/G E_π[(r − J)/|y| ∇log π]",
       lengths.sequence_mean_is_length_weighted_gradient),
    _s("G5 constant_norm_is_scaled_gradient",
       "Dr.GRPO n = 1/(G T), no std: field = (G−1)/(G T) ∇J",
       lengths.constant_norm_is_scaled_gradient),
    _s("G5 constant_length_normalisers_agree",
       "constant length: every normaliser's field is the per-sequence sum's over ℓ or T",
       lengths.constant_length_normalisers_agree),
)

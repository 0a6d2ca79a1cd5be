r"""The loss aggregation of the group recipes on sampled groups (verl's ``agg_loss`` modes).

The exact expectations live in :mod:`..groups` (G5); here is what a trainer computes on one sampled
group: per response its length normaliser n_i (:func:`sampled_normalisers`) and the per-token
weight of its tokens. verl's ``agg_loss(loss_mat, loss_mask, loss_agg_mode)``:

- ``token-mean``: Σ masked loss / number of valid tokens (DAPO; here: of the group);
- ``seq-mean-token-sum``: mean over sequences of each sequence's token sum;
- ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (GRPO);
- ``seq-mean-token-sum-norm``: Σ over all tokens / the padded width T (Dr.GRPO's constant; here
  with THEORY.md G5's extra 1/G, see :mod:`..groups`).

A response's tokens all carry the same weight n_i, so the aggregated loss −Σ_i n_i Σ_t ℓ_{i,t} has
the gradient Σ_i n_i Σ_t ∇(−ℓ_{i,t}); which mode a recipe uses is its config's ``loss_agg_mode``.

References: volcengine/verl ``verl/trainer/ppo/core_algos.py::agg_loss``; research/fusion-methods.md
(token-level addendum); THEORY.md G5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..groups import LOSS_AGG_MODES, length_normaliser

__all__ = ["LOSS_AGG_MODES", "RECIPE_MODES", "sampled_normalisers"]

# The mode each published recipe aggregates with (its paper and verl config).
RECIPE_MODES = {"grpo": "seq-mean-token-mean", "dapo": "token-mean",
                "dr_grpo": "seq-mean-token-sum-norm", "ppo_clip": "token-mean"}


def sampled_normalisers(mode: str, lengths: jax.Array, max_length: float) -> jax.Array:
  r"""[..., G] n_i of each response of sampled groups [..., G] of lengths |o_i|.

  Args:
    mode: one of :data:`LOSS_AGG_MODES`.
    lengths: [..., G] the responses' lengths (the last axis is the group).
    max_length: T.

  Returns:
    [..., G] n_i (1/(G|o_i|), 1/Σ_j|o_j|, 1/(G T) or 1/G).

  Examples:
    >>> import jax.numpy as jnp
    >>> sampled_normalisers("token-mean", jnp.array([1.0, 3.0]), 4.0).tolist()
    [0.25, 0.25]
    >>> sampled_normalisers("seq-mean-token-mean", jnp.array([1.0, 4.0]), 4.0).tolist()
    [0.5, 0.125]
  """
  group = lengths.shape[-1]
  total = jnp.sum(lengths, axis=-1, keepdims=True)
  return length_normaliser(mode, lengths, jnp.broadcast_to(total, lengths.shape), group,
                           max_length)

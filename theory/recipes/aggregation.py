r"""How a recipe's RL loss is aggregated over the samples of one prompt's group.

verl's loss aggregation with ``loss_remove_token_mean=True`` (the HPT, LUFFY and ReLIFT scripts)
is Σ_tokens ℓ / L_max with the constant L_max (the padded response width); for atomic responses
(fusion-methods.md Rule 4) every response is one token, so the group's samples are *summed*:
n times the group mean. ``group_mean`` is the mean over the group (token-mean with equal lengths).

References: fusion-methods.md §2, §4, §6 and the token-level addendum (verl ``agg_loss``,
``seq-mean-token-sum-norm``).
"""

from __future__ import annotations

__all__ = ["RL_AGGREGATIONS", "group_scale"]

RL_AGGREGATIONS = ("group_sum", "group_mean")


def group_scale(aggregation: str, n: int) -> float:
  """The factor on the group-mean gradient: n for ``group_sum``, 1 for ``group_mean``.

  Args:
    aggregation: one of RL_AGGREGATIONS.
    n: samples in the group.

  Returns:
    n or 1.

  Examples:
    >>> group_scale("group_sum", 8), group_scale("group_mean", 8)
    (8.0, 1.0)
  """
  if aggregation not in RL_AGGREGATIONS:
    raise ValueError(f"aggregation is {aggregation!r}, expected one of {RL_AGGREGATIONS}")
  return float(n) if aggregation == "group_sum" else 1.0

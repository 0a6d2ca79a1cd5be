r"""ReLIFT's SFT buffer as expected masses: one slot per outer step's inflow, newest first.

The released code (TheRoadQaQ/ReLIFT @ eb95454, ``relift/verl/verl/relift/trainer.py``) prepends
the step's all-failed prompts to ``sft_buffer_batch`` (``DataProto.concat([buffer_batch,
sft_buffer_batch])``) and, once it holds ``sft_data_size`` items, takes the *first*
``sft_data_size`` of them: the newest items are consumed first and the remainder (the oldest) is
kept. The deterministic surrogate keeps the expected inflow of every step in its own slot
([K, X], row 0 newest) and consumes S items from the newest slots; within one step (one batch, in
the data loader's random order) the boundary slot is consumed in proportion. ``oldest_first``
consumes from the other end (a FIFO queue, as in a later version of the code that appends).

With more than K live slots the two oldest are merged (their items then leave in proportion);
K = 1 is the proportional surrogate.

References: fusion-methods.md §6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["BUFFER_ORDERS", "buffer_init", "buffer_push", "buffer_take"]

BUFFER_ORDERS = ("newest_first", "oldest_first")


def buffer_init(slots: int, n_prompts: int, dtype) -> jax.Array:
  """An empty buffer: [slots, X] zeros (row k holds the expected items of the step k steps ago).

  Examples:
    >>> buffer_init(3, 2, "float64").shape
    (3, 2)
  """
  return jnp.zeros((slots, n_prompts), dtype)


def buffer_push(buf: jax.Array, inflow: jax.Array) -> jax.Array:
  """Puts a step's inflow [X] in row 0 and ages every slot by one; the two oldest merge when full.

  Examples:
    >>> import jax.numpy as jnp
    >>> buffer_push(jnp.array([[1.0], [2.0]]), jnp.array([5.0])).tolist()
    [[5.0], [3.0]]
  """
  if buf.shape[0] == 1:
    return buf + inflow[None]
  older = buf[:-1].at[-1].add(buf[-1])
  return jnp.concatenate([inflow[None], older], axis=0)


def buffer_take(buf: jax.Array, size: float, order: str = "newest_first"):
  r"""Takes ``size`` items when the buffer holds at least that many.

  Slot k gives min(tot_k, max(0, size − C_k)) items, C_k the items in the slots before it in
  ``order``, each prompt in proportion to its mass in the slot.

  Args:
    buf: [K, X] expected items per slot (row 0 newest) and prompt.
    size: S, the SFT batch (``sft_data_size``).
    order: ``newest_first`` (the released code) or ``oldest_first``.

  Returns:
    (taken [X] items per prompt (0 when the buffer holds fewer than S), new buffer, fired []).

  Examples:
    >>> import jax.numpy as jnp
    >>> buf = jnp.array([[1.0, 1.0], [3.0, 0.0]])    # newest: 2 items, then 3
    >>> taken, rest, fired = buffer_take(buf, 3.0)
    >>> taken.tolist(), rest.tolist(), bool(fired)
    ([2.0, 1.0], [[0.0, 0.0], [2.0, 0.0]], True)
  """
  if order not in BUFFER_ORDERS:
    raise ValueError(f"buffer order is {order!r}, expected one of {BUFFER_ORDERS}")
  tot = jnp.sum(buf, axis=1)
  if order == "newest_first":
    before = jnp.cumsum(tot) - tot
  else:
    before = jnp.cumsum(tot[::-1])[::-1] - tot
  fired = jnp.sum(tot) >= size
  take = jnp.clip(size - before, 0.0, tot)
  frac = jnp.where(fired & (tot > 0), take / jnp.where(tot > 0, tot, 1.0), 0.0)
  taken = jnp.sum(frac[:, None] * buf, axis=0)
  return taken, buf * (1.0 - frac[:, None]), fired

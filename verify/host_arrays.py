"""Host (NumPy) arrays put on the device by a transfer alone.

``jnp.asarray(a, dtype)`` of a NumPy array stages a conversion, a compiled program per shape and
dtype; a warm `verify` lowered and loaded about fifty of them for its random instances and trees.
``jax.device_put`` of the array already in its dtype is a copy, no program.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["on_device"]


def on_device(a, dtype=None) -> jax.Array:
  """``a`` (array-like) on the default device, as ``dtype`` (default: NumPy's), with no program.

  Examples:
    >>> x = on_device([1, 2], np.float64)
    >>> x.dtype, x.tolist()
    (dtype('float64'), [1.0, 2.0])
  """
  return jax.device_put(np.asarray(a, dtype))

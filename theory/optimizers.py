"""The optimisers a trainer would run, by name (one factory for flows, linear heads and the bridge).

All are optax ``GradientTransformation``s wrapped in ``optax.inject_hyperparams`` so that the
learning rate is a traced value (no recompilation per value).
"""

from __future__ import annotations

import optax

__all__ = ["OPTIMIZERS", "make_optimizer"]

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, learning_rate) -> optax.GradientTransformation:
  """optax SGD or Adam with a traced learning rate.

  Args:
    name: "sgd" or "adam".
    learning_rate: step size (a number or a traced scalar).

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` takes the gradient of the minimised loss.

  Examples:
    >>> opt = make_optimizer("sgd", 0.1)
    >>> import jax.numpy as jnp
    >>> upd, _ = opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))
    >>> upd.tolist()
    [-0.1, -0.1]
  """
  if name == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
  if name == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
  raise ValueError(f"optimizer is {name!r}, expected one of {', '.join(OPTIMIZERS)}")

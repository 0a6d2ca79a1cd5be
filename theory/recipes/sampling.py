r"""Sampling rollouts and demonstrations for the Monte-Carlo estimators of the recipes.

Responses are drawn by inverse CDF from the rows of a policy (never a zero-probability entry), so
the estimators are pure functions of a PRNG key; :class:`Draws` carries one call's draws.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import policy_log_probs

__all__ = ["Draws", "draw", "inverse_cdf", "score"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Draws:
  """Sampled responses of one estimator call.

  Attributes:
    on: [X, n] int, on-policy group drawn from π_old (n = 0 for SFT).
    demo: [X] int, demonstration y* drawn from d.
  """

  on: jax.Array
  demo: jax.Array


def draw(key: jax.Array, inst: Instance, theta_old: jax.Array, n_on: int) -> Draws:
  """On-policy group [X, n_on] from π_old = softmax(θ_old) and one demonstration [X] from d.

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> dr = draw(jax.random.PRNGKey(0), inst, inst.data * 0.0, 3)
    >>> dr.on.shape, dr.demo.tolist()  # the demonstration is always response 1
    ((1, 3), [1])
  """
  k_on, k_demo = jax.random.split(key)
  pi_old = jnp.exp(policy_log_probs(inst, theta_old))
  on = inverse_cdf(k_on, pi_old, n_on)
  demo = inverse_cdf(k_demo, jnp.where(inst.data > 0, inst.data, 0.0), 1)[:, 0]
  return Draws(on=on, demo=demo)


def inverse_cdf(key: jax.Array, probs: jax.Array, n: int) -> jax.Array:
  """[X, n] indices drawn from the rows of probs [X, Y] (never a zero-probability entry).

  Index = #{y : u ≥ CDF(y)} for u ∼ U[0, 1), capped at the last positive entry.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> inverse_cdf(jax.random.PRNGKey(0), jnp.array([[0.0, 1.0, 0.0]]), 4).tolist()
    [[1, 1, 1, 1]]
  """
  n_x, n_y = probs.shape
  u = jax.random.uniform(key, (n_x, n), dtype=probs.dtype)
  cdf = jnp.cumsum(probs, axis=-1)
  cdf = cdf / cdf[:, -1:]
  idx = jnp.sum(u[:, :, None] >= cdf[:, None, :], axis=-1)
  last = n_y - 1 - jnp.argmax((probs > 0)[:, ::-1], axis=-1)
  return jnp.minimum(idx, last[:, None]).astype(jnp.int32)


def score(pi_row, idx):
  """[k, Y] ∇_θ log π(y_i) = e_{y_i} − π for the indices idx [k].

  Examples:
    >>> import jax.numpy as jnp
    >>> score(jnp.array([0.5, 0.5]), jnp.array([0])).tolist()
    [[0.5, -0.5]]
  """
  return jax.nn.one_hot(idx, pi_row.shape[-1], dtype=pi_row.dtype) - pi_row[None, :]

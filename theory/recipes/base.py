r"""The recipe interface: one object per recipe with an exact field, an estimator and a state hook.

A :class:`Recipe` bundles

- ``field(inst, θ, θ_old, cfg)``: the exact expected ascent direction on the logits [X, Y]
  (expectations over rollouts taken in closed form or by enumeration), prompt weights included;
- ``estimate(inst, θ, θ_old, cfg, draws)``: the sampled estimator as a trainer computes it from
  drawn responses (:class:`~.sampling.Draws`); its mean over draws equals ``field``;
- ``samples(cfg)``: on-policy draws per prompt one estimator call needs;
- a stateful hook in the style of optax's ``GradientTransformation(init, update)``:
  ``init(inst, θ, cfg) -> state`` and ``update(inst, θ_old, θ, state, lr, cfg) -> (θ, state)``,
  applied by the trainer after every outer step (ReLIFT's SFT buffer, schedules). Stateless
  recipes use :func:`no_state` and :func:`no_update`;
- ``step_field``: the field a trainer applies at each inner step (default ``field``; ReLIFT applies
  its RL part and leaves the SFT part to its buffer hook, while ``field`` is the amortised sum).

The trainer (:mod:`.train`) therefore never dispatches on names or config types.

References: Lv et al., arXiv 2509.04419 (UPGE: the unified form these fields are written in).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ..instance import Instance
from ..objectives import policy_log_probs, rl_support

__all__ = ["Recipe", "ConfigError", "no_state", "no_update", "one_inner_step", "keep_config",
           "policy", "finish"]


class ConfigError(ValueError):
  """A recipe option breaks its rule; the message is one line naming the option and the rule."""


def no_state(inst: Instance, theta: jax.Array, cfg: Any) -> jax.Array:
  """The state of a stateless recipe (an empty array).

  Examples:
    >>> no_state(None, None, None).shape
    (0,)
  """
  del inst, theta, cfg
  return jnp.zeros((0,))


def no_update(inst: Instance, theta_old: jax.Array, theta: jax.Array, state, lr, cfg):
  """The update of a stateless recipe: the logits and the state pass through.

  Examples:
    >>> no_update(None, None, 1.0, "state", 0.1, None)
    (1.0, 'state')
  """
  del inst, theta_old, lr, cfg
  return theta, state


def one_inner_step(cfg: Any) -> int:
  """Inner steps per rollout batch of a recipe without PPO-style reuse: 1.

  Examples:
    >>> one_inner_step(None)
    1
  """
  del cfg
  return 1


def keep_config(inst: Instance, cfg: Any) -> Any:
  """The ``prepare`` hook of a recipe whose config needs nothing from the instance.

  Examples:
    >>> keep_config(None, "cfg")
    'cfg'
  """
  del inst
  return cfg


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One fusion recipe (see the module docstring for the meaning of each callable).

  Attributes:
    name: registry key.
    config: the default (published) config; pass another instance of its class to override.
    field: exact expected ascent field.
    estimate: sampled estimator.
    samples: cfg -> on-policy draws per prompt of one estimator call.
    summary: one line (unified form).
    step_field: field applied at each inner step (None: ``field``).
    init, update: the state hook.
    inner_steps: cfg -> inner steps per rollout batch.
    prepare: (inst, cfg) -> cfg, completes a config from concrete data before compiling.
  """

  name: str
  config: Any
  field: Callable
  estimate: Callable
  samples: Callable
  summary: str
  step_field: Callable | None = None
  init: Callable = no_state
  update: Callable = no_update
  inner_steps: Callable = one_inner_step
  prepare: Callable = keep_config

  @property
  def train_field(self) -> Callable:
    """The field the trainer applies at every inner step."""
    return self.field if self.step_field is None else self.step_field


def policy(inst: Instance, theta: jax.Array):
  """(log π, π) of the tabular softmax policy π = softmax(θ_x) over the RL support.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> policy(inst, jnp.zeros((1, 2)))[1].tolist()
    [[0.5, 0.5]]
  """
  log_pi = policy_log_probs(inst, theta)
  return log_pi, jnp.exp(log_pi)


def finish(inst: Instance, g: jax.Array) -> jax.Array:
  """w_x g_x on the RL support, 0 off it: weights a per-prompt direction by its prompt weight.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([0.25, 0.75], [[0.5, 0.5], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]], 1.0)
    >>> finish(inst, jnp.ones((2, 2))).tolist()  # response 1 of prompt 1 is off the support
    [[0.25, 0.25], [0.75, 0.0]]
  """
  return jnp.where(rl_support(inst), inst.prompt_weights[:, None] * g, 0.0)

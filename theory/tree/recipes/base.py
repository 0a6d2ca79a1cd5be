r"""The tree-recipe interface: an exact expected field, a sampled estimator and a state hook.

A :class:`TreeRecipe` bundles

- ``field(tree, θ, cfg) -> Levels``: the exact expected ascent direction on the per-node logits
  (one [X, N_t, k] array per level), prompt weights included, every expectation over rollouts
  (groups, prefixes, hints) taken in closed form or by exact enumeration;
- ``estimate(tree, θ, cfg, key, n) -> Levels``: the mean of ``n`` independent calls of the
  estimator a trainer computes from responses sampled from the tree (:mod:`..sampling`); its
  expectation equals ``field`` (the tests fit the 1/√n decay of the error);
- a stateful hook in the style of optax's ``GradientTransformation(init, update)``:
  ``init(tree, θ, cfg) -> state`` and ``update(tree, θ_old, θ, state, lr, cfg) -> (θ, state)``,
  applied by the trainer after every step (ReLIFT's buffer, hint schedules). Stateless recipes
  keep the defaults;
- ``prepare(tree, cfg) -> cfg``: the config made concrete from the concrete tree before the
  trainer traces anything (the static level counts the exact group enumerations need). The
  default returns ``cfg`` unchanged.

The trainer never dispatches on names or config types.

References: Lv et al., arXiv 2509.04419 (UPGE: the unified form); each recipe's module names its
paper section and public code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

__all__ = ["TreeRecipe", "no_prepare", "no_state", "no_update"]


def no_state(tree, theta, cfg):
  """The state of a stateless recipe (an empty array).

  Examples:
    >>> no_state(None, None, None).shape
    (0,)
  """
  del tree, theta, cfg
  return jnp.zeros((0,))


def no_prepare(tree, cfg):
  """The config hook of a recipe whose config needs nothing from the tree: ``cfg`` unchanged.

  Examples:
    >>> no_prepare(None, "config")
    'config'
  """
  del tree
  return cfg


def no_update(tree, theta_old, theta, state, lr, cfg):
  """The update of a stateless recipe: the logits and the state pass through.

  Examples:
    >>> no_update(None, None, 1.0, "state", 0.1, None)
    (1.0, 'state')
  """
  del tree, theta_old, lr, cfg
  return theta, state


@dataclasses.dataclass(frozen=True)
class TreeRecipe:
  """One recipe on trees (the module docstring gives each callable's signature).

  Attributes:
    name: registry key (the atomic recipe's name where one exists, e.g. ``"grpo"``).
    config: the default (published) config, a frozen dataclass validated in ``__post_init__``.
    field: exact expected ascent field.
    estimate: mean of n sampled estimator calls.
    summary: one line: what the recipe does at the token level.
    reference: the published source (paper section and public code function).
    init, update: the state hook.
    prepare: the config hook, run on the concrete tree before tracing.
  """

  name: str
  config: Any
  field: Callable
  estimate: Callable
  summary: str
  reference: str
  init: Callable = no_state
  update: Callable = no_update
  prepare: Callable = no_prepare

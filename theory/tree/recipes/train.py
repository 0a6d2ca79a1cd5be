r"""Training a tree recipe: its exact field (or its estimator) as discrete ascent steps on θ.

From θ₀ = log ρ (per node, :func:`~..policy.initial_logits`) each step is

.. math:: \theta' = \theta + \eta\, g(\theta),\qquad (\theta, s) \leftarrow
          \mathrm{update}(\theta_{\mathrm{old}} = \theta,\ \theta',\ s,\ \eta)

with g the recipe's exact expected field (:func:`train_tree_recipe`) or the mean of n estimator
calls (:func:`train_tree_recipe_sampled`), and ``update`` the recipe's state hook (optax style,
:class:`~.base.TreeRecipe`); the recipe's ``prepare`` hook first fills what its config reads
from the concrete tree (level counts). The trainer never looks at a recipe's name or config type. Steps run
in one ``lax.scan``; the recipe, its config and the step counts are static, so each (bucket,
recipe, config, steps) compiles once; θ₀, η and the key are traced. :func:`tree_recipe_path`
records θ every ``steps // points`` steps for trajectories (`flow`).

References: THEORY.md G (token level); the recipes' own modules name their sources.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..instance import TreeInstance
from ..policy import Levels, initial_logits
from .base import TreeRecipe
from .registry import get_tree_recipe

__all__ = ["train_tree_recipe", "train_tree_recipe_sampled", "tree_recipe_path"]


def _resolve(recipe: TreeRecipe | str) -> TreeRecipe:
  return get_tree_recipe(recipe) if isinstance(recipe, str) else recipe


def _start(tree: TreeInstance, theta0: Levels | None) -> Levels:
  if theta0 is None:
    return initial_logits(tree)
  return tuple(jnp.asarray(t, tree.prompt_weights.dtype) for t in theta0)


@functools.partial(jax.jit, static_argnames=("recipe", "cfg", "segments", "per", "samples"))
def _path(tree, theta0, lr, key, recipe: TreeRecipe, cfg, segments: int, per: int,
          samples: int):
  """θ at the start and after each of ``segments`` runs of ``per`` steps, and the final state.

  ``samples`` = 0: the exact field; > 0: the mean of that many estimator calls per step.
  """

  def step(carry, step_key):
    theta, state = carry
    if samples:
      g = recipe.estimate(tree, theta, cfg, step_key, samples)
    else:
      g = recipe.field(tree, theta, cfg)
    new = tuple(t + lr * gt for t, gt in zip(theta, g))
    return recipe.update(tree, theta, new, state, lr, cfg), None

  def segment(carry, seg_keys):
    carry, _ = jax.lax.scan(step, carry, seg_keys)
    return carry, carry[0]

  keys = jax.random.split(key, segments * per).reshape((segments, per) + key.shape)
  state0 = recipe.init(tree, theta0, cfg)
  (_, state), thetas = jax.lax.scan(segment, (theta0, state0), keys)
  thetas = tuple(jnp.concatenate([t0[None], ts]) for t0, ts in zip(theta0, thetas))
  return thetas, state


def _config(recipe: TreeRecipe, config):
  return recipe.config if config is None else config


def train_tree_recipe(tree: TreeInstance, recipe: TreeRecipe | str, steps: int, lr: float,
                      config=None, theta0: Levels | None = None):
  r"""``steps`` exact-field ascent steps θ ← θ + lr·g(θ), each followed by the state hook.

  Args:
    tree: an unbatched tree.
    recipe: a :class:`~.base.TreeRecipe` or the name of one in ``TREE_RECIPES``.
    steps: number of steps (≥ 1).
    lr: learning rate η.
    config: the recipe's config (default: its published one).
    theta0: per-level start logits (default log ρ).

  Returns:
    (θ per level [X, N_t, k] after the last step, the recipe's final state).

  Raises:
    Whatever the recipe's field raises while it is traced (e.g. an ``InfeasibleExactField`` of
    :mod:`nondecoupling.theory.recipes` when an exact group expectation is too large).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> from nondecoupling.theory.tree.bellman import optimal_policy
    >>> from nondecoupling.theory.tree.policy import policy_log_probs
    >>> from nondecoupling.theory.tree.recipes.constructs import KL_CONSTRUCT_RECIPES
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> theta, _ = train_tree_recipe(tree, KL_CONSTRUCT_RECIPES["k1_reward"], 2000, 2.0)
    >>> gap = jnp.exp(policy_log_probs(tree, theta)[0]) - jnp.exp(optimal_policy(tree)[0])
    >>> bool(jnp.max(jnp.abs(gap)) < 1e-9)  # the k1-in-reward ascent reaches π*_β
    True
  """
  thetas, state = tree_recipe_path(tree, recipe, steps, lr, 1, config, theta0)
  return tuple(t[-1] for t in thetas), state


def train_tree_recipe_sampled(tree: TreeInstance, recipe: TreeRecipe | str, steps: int,
                              lr: float, key: jax.Array, samples: int, config=None,
                              theta0: Levels | None = None):
  r"""As :func:`train_tree_recipe` with the field replaced by the mean of ``samples`` estimator
  calls per step (fresh draws every step; unbiased for the exact field).

  Used where the exact field is infeasible (too many groups to enumerate).

  Args:
    tree: an unbatched tree.
    recipe: a :class:`~.base.TreeRecipe` or a name in ``TREE_RECIPES``.
    steps: number of steps; lr: learning rate.
    key: PRNG key (the run is deterministic in it).
    samples: estimator calls per step (≥ 1).
    config: the recipe's config (default: its published one).
    theta0: per-level start logits (default log ρ).

  Returns:
    (θ per level after the last step, the final state).

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> from nondecoupling.theory.tree.recipes.constructs import KL_CONSTRUCT_RECIPES
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> theta, _ = train_tree_recipe_sampled(tree, KL_CONSTRUCT_RECIPES["k3_loss"], 5, 0.5,
    ...                                      jax.random.PRNGKey(0), 64)
    >>> theta[0].shape
    (1, 1, 2)
  """
  if samples < 1:
    raise ValueError(f"samples is {samples}, expected a whole number >= 1")
  r = _resolve(recipe)
  return _run(tree, r, _config(r, config), steps, 1, lr, key, samples, theta0, last=True)


def tree_recipe_path(tree: TreeInstance, recipe: TreeRecipe | str, steps: int, lr: float,
                     points: int, config=None, theta0: Levels | None = None,
                     key: jax.Array | None = None, samples: int = 0):
  r"""θ at the start and every ``steps // points`` steps of the ascent (exact field by default).

  Args:
    tree: an unbatched tree.
    recipe: a :class:`~.base.TreeRecipe` or a name in ``TREE_RECIPES``.
    steps: total steps, a multiple of ``points``.
    lr: learning rate.
    points: recorded points after the start (≥ 1).
    config: the recipe's config (default: its published one).
    theta0: per-level start logits (default log ρ).
    key, samples: with ``samples`` > 0, the estimator's mean over that many calls per step.

  Returns:
    (θ per level with a leading axis [points + 1, X, N_t, k], the final state).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.tree.atomic import tree_from_atomic
    >>> from nondecoupling.theory.tree.recipes.constructs import KL_CONSTRUCT_RECIPES
    >>> tree = tree_from_atomic(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> thetas, _ = tree_recipe_path(tree, KL_CONSTRUCT_RECIPES["k1_reward"], 4, 1.0, 2)
    >>> thetas[0].shape  # the start and 2 recorded points
    (3, 1, 1, 2)
    >>> bool(thetas[0][-1, 0, 0, 1] > thetas[0][0, 0, 0, 1])  # the rewarded response gains
    True
  """
  if steps < 1 or points < 1 or steps % points:
    raise ValueError(f"steps {steps} must be a positive multiple of points {points}")
  r = _resolve(recipe)
  key = jax.random.PRNGKey(0) if key is None else key
  return _run(tree, r, _config(r, config), steps // points, points, lr, key, samples, theta0,
              last=False)


def _run(tree, recipe, cfg, per, segments, lr, key, samples, theta0, last):
  cfg = recipe.prepare(tree, cfg)  # on the concrete tree, before anything is traced
  theta0 = _start(tree, theta0)
  lr = jnp.asarray(lr, tree.prompt_weights.dtype)
  thetas, state = _path(tree, theta0, lr, key, recipe, cfg, int(segments), int(per),
                        int(samples))
  if last:
    return tuple(t[-1] for t in thetas), state
  return thetas, state

r"""The registry of recipes and the entry points that run one by name.

:data:`RECIPES` maps a name to its :class:`~.base.Recipe`; :data:`FUSION_RECIPES` are the ones
``compare`` reports beside the pipelines. :func:`recipe_field`, :func:`recipe_estimate` and
:func:`recipe_sample` evaluate a recipe's exact field, its estimator on given draws, and its
estimator on fresh draws.
"""

from __future__ import annotations

import functools

import jax

from ..instance import Instance
from .base import ConfigError, Recipe
from .grpo import DR_GRPO, GRPO, GRPO_REVERSE_KL
from .hpt import HPT
from .kl_penalty import KL_K3, KL_REVERSE
from .luffy import LUFFY
from .ppo import PPO_CLIP
from .reinforce import REINFORCE
from .relift import RELIFT
from .sampling import Draws, draw
from .sft import SFT
from .srft import SRFT, SRFT_HPT

__all__ = ["RECIPES", "FUSION_RECIPES", "get_recipe", "resolve_config", "recipe_field",
           "recipe_estimate", "recipe_sample"]

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    SFT, REINFORCE, GRPO, GRPO_REVERSE_KL, DR_GRPO, PPO_CLIP, KL_K3, KL_REVERSE, HPT, LUFFY, SRFT,
    SRFT_HPT, RELIFT)}

FUSION_RECIPES = ("grpo", "dr_grpo", "hpt", "luffy", "srft", "relift")


def get_recipe(name: str) -> Recipe:
  """The recipe registered under ``name`` (ConfigError naming the known ones otherwise).

  Examples:
    >>> get_recipe("grpo").config.group_size
    8
  """
  if name not in RECIPES:
    raise ConfigError(f"recipe {name!r} is not known (known: {', '.join(sorted(RECIPES))})")
  return RECIPES[name]


def resolve_config(recipe: Recipe, config, inst: Instance | None = None):
  """The recipe's config (its default when ``config`` is None), completed from ``inst`` if given.

  A config of another recipe's type is refused (ConfigError).

  Examples:
    >>> resolve_config(get_recipe("dr_grpo"), None).use_std
    False
  """
  cfg = recipe.config if config is None else config
  if type(cfg) is not type(recipe.config):
    raise ConfigError(f"recipe {recipe.name!r} takes a {type(recipe.config).__name__}, "
                      f"got {type(cfg).__name__}")
  return cfg if inst is None else recipe.prepare(inst, cfg)


@functools.partial(jax.jit, static_argnames=("name", "cfg"))
def _field_jit(inst, theta, theta_old, name, cfg):
  return RECIPES[name].field(inst, theta, theta_old, cfg)


@functools.partial(jax.jit, static_argnames=("name", "cfg"))
def _sample_jit(key, inst, theta, theta_old, name, cfg):
  recipe = RECIPES[name]
  draws = draw(key, inst, theta_old, max(recipe.samples(cfg), 1))
  return recipe.estimate(inst, theta, theta_old, cfg, draws)


def recipe_field(inst: Instance, name: str, theta: jax.Array, theta_old: jax.Array | None = None,
                 config=None) -> jax.Array:
  r"""The exact expected ascent field of recipe ``name`` at logits θ (rollouts from θ_old).

  Args:
    inst: instance.
    name: a key of :data:`RECIPES`.
    theta: [X, Y] logits of the policy being updated.
    theta_old: [X, Y] logits of the rollout policy (default θ: the first inner step).
    config: the recipe's config (default: published defaults).

  Returns:
    [X, Y] ascent direction (0 off the RL support), prompt weights included.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> recipe_field(inst, "reinforce", jnp.zeros((1, 2))).tolist()  # F_π r
    [[-0.25, 0.25]]
  """
  recipe = get_recipe(name)
  cfg = resolve_config(recipe, config, inst)
  theta_old = theta if theta_old is None else theta_old
  return _field_jit(inst, theta, theta_old, name, cfg)


def recipe_estimate(inst: Instance, name: str, theta: jax.Array, draws: Draws,
                    theta_old: jax.Array | None = None, config=None) -> jax.Array:
  """The sampled estimator of recipe ``name`` on given draws (see :class:`~.sampling.Draws`).

  Args:
    inst: instance; name: a key of :data:`RECIPES`; theta: [X, Y] logits; draws: the samples;
    theta_old: rollout logits (default θ); config: the recipe's config (default: published).

  Returns:
    [X, Y] one estimate of the field.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> draws = Draws(on=jnp.zeros((1, 1), int), demo=jnp.array([1]))
    >>> recipe_estimate(inst, "sft", jnp.zeros((1, 2)), draws).tolist()  # e_{y*} − π
    [[-0.5, 0.5]]
  """
  recipe = get_recipe(name)
  cfg = resolve_config(recipe, config)
  theta_old = theta if theta_old is None else theta_old
  return recipe.estimate(inst, theta, theta_old, cfg, draws)


def recipe_sample(key: jax.Array, inst: Instance, name: str, theta: jax.Array,
                  theta_old: jax.Array | None = None, config=None) -> jax.Array:
  """One Monte-Carlo estimate of the field: draws from π_old and d, then the estimator.

  Its expectation over ``key`` equals :func:`recipe_field` (tested).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> recipe_sample(jax.random.PRNGKey(0), inst, "sft", jnp.zeros((1, 2))).tolist()
    [[-0.5, 0.5]]
  """
  recipe = get_recipe(name)
  cfg = resolve_config(recipe, config)
  theta_old = theta if theta_old is None else theta_old
  return _sample_jit(key, inst, theta, theta_old, name, cfg)

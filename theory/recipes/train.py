r"""Training with a recipe: its exact field (or its estimator) as discrete ascent steps.

Each outer step fixes the rollout policy θ_old = θ, takes the recipe's inner steps
θ ← θ + lr · g(θ; θ_old) and then applies the recipe's state hook (``update``), which is where
ReLIFT's buffer lives. The trainer itself treats every recipe alike.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from .. import objectives as obj
from ..instance import Instance
from .base import ConfigError
from .registry import RECIPES, get_recipe, resolve_config
from .sampling import draw

__all__ = ["RecipeTrajectory", "train_recipe", "train_recipe_sampled"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RecipeTrajectory:
  """SFT loss and reward along training (index 0: the start, then after each outer step).

  Attributes:
    sft_loss: [steps + 1] L(π_t).
    reward: [steps + 1] J(π_t).
  """

  sft_loss: jax.Array
  reward: jax.Array


@functools.partial(jax.jit, static_argnames=("name", "steps", "cfg"))
def _train(inst, theta0, lr, name: str, steps: int, cfg):
  recipe = RECIPES[name]
  inner = recipe.inner_steps(cfg)
  field = recipe.train_field

  def measure(theta):
    log_pi = obj.policy_log_probs(inst, theta)
    return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)

  def outer(carry, _):
    theta, state = carry
    theta_old = theta

    def inner_step(th, _):
      return th + lr * field(inst, th, theta_old, cfg), None

    theta, _ = jax.lax.scan(inner_step, theta, None, length=inner)
    theta, state = recipe.update(inst, theta_old, theta, state, lr, cfg)
    return (theta, state), measure(theta)

  state0 = recipe.init(inst, theta0, cfg)
  (theta, _), (l_traj, j_traj) = jax.lax.scan(outer, (theta0, state0), None, length=steps)
  l0, j0 = measure(theta0)
  traj = RecipeTrajectory(sft_loss=jnp.concatenate([l0[None], l_traj]),
                          reward=jnp.concatenate([j0[None], j_traj]))
  return obj.policy_log_probs(inst, theta), traj


def train_recipe(inst: Instance, name: str, steps: int, lr: float, config=None,
                 theta0: jax.Array | None = None):
  r"""Runs a recipe's exact field as discrete ascent steps θ ← θ + lr · g(θ; θ_old).

  Each outer step fixes θ_old = θ (the rollout policy) and takes the config's ``inner_steps``
  (PPO/GRPO: K inner steps on one batch; others: 1), then the recipe's state hook. ReLIFT runs
  its buffer there: the expected number of all-failed prompts B w_x (1 − p_x)^n of each step
  enters the buffer, and when it holds the buffer size S an SFT step with learning rate
  lr·sft_lr_ratio is taken on the S newest items (which leave it).
  Compiles once per (shape, name, steps, config); lr and θ0 are traced.

  Args:
    inst: instance (unbatched; vmap over a padded batch if needed).
    name: a key of :data:`RECIPES`.
    steps: number of outer steps.
    lr: learning rate.
    config: the recipe's config (default: published defaults).
    theta0: [X, Y] initial logits (default: log ρ).

  Returns:
    (log_pi [X, Y] final policy, :class:`RecipeTrajectory` with [steps + 1] L and J).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> log_pi, traj = train_recipe(inst, "sft", steps=3, lr=1.0)
    >>> traj.sft_loss.shape, bool(traj.sft_loss[-1] < traj.sft_loss[0])
    ((4,), True)
  """
  recipe = get_recipe(name)
  cfg = resolve_config(recipe, config, inst)
  theta0 = obj.initial_logits(inst) if theta0 is None else jnp.asarray(theta0, inst.data.dtype)
  lr = jnp.asarray(lr, inst.data.dtype)
  return _train(inst, theta0, lr, name, int(steps), cfg)


@functools.partial(jax.jit, static_argnames=("name", "steps", "samples", "cfg"))
def _train_sampled(inst, theta0, lr, key, name: str, steps: int, samples: int, cfg):
  recipe = RECIPES[name]
  inner = recipe.inner_steps(cfg)
  group = max(recipe.samples(cfg), 1)

  def measure(theta):
    log_pi = obj.policy_log_probs(inst, theta)
    return obj.sft_loss(inst, log_pi), obj.reward(inst, log_pi)

  def outer(carry, step_key):
    theta = carry
    theta_old = theta
    keys = jax.random.split(step_key, samples)
    # One batch of rollouts per outer step, reused by the inner steps (as PPO/GRPO do).
    draws = jax.vmap(lambda k: draw(k, inst, theta_old, group))(keys)

    def inner_step(th, _):
      g = jax.vmap(lambda dr: recipe.estimate(inst, th, theta_old, cfg, dr))(draws)
      return th + lr * jnp.mean(g, axis=0), None

    theta, _ = jax.lax.scan(inner_step, theta, None, length=inner)
    return theta, measure(theta)

  theta, (l_traj, j_traj) = jax.lax.scan(outer, theta0, jax.random.split(key, steps))
  l0, j0 = measure(theta0)
  traj = RecipeTrajectory(sft_loss=jnp.concatenate([l0[None], l_traj]),
                          reward=jnp.concatenate([j0[None], j_traj]))
  return obj.policy_log_probs(inst, theta), traj


def train_recipe_sampled(inst: Instance, name: str, steps: int, lr: float, key: jax.Array,
                         samples: int = 512, config=None, theta0: jax.Array | None = None):
  r"""Runs a recipe with its Monte-Carlo estimator instead of the exact field.

  For rewards with many distinct values the exact group expectation of GRPO-style recipes needs
  too many multisets (see ``MAX_GROUP_ENUMERATION``); this runs the same ascent with the field
  replaced by the mean of the estimator over ``samples`` independent groups per outer step (an
  unbiased estimate of the exact field, tested against it). ReLIFT's buffer is not simulated here.

  Args:
    inst: instance.
    name: a key of :data:`RECIPES` other than ``relift``.
    steps: outer steps; lr: learning rate; key: PRNG key; samples: groups per outer step.
    config: the recipe's config (default: published defaults).
    theta0: [X, Y] initial logits (default: log ρ).

  Returns:
    (log_pi [X, Y] final policy, :class:`RecipeTrajectory`).

  Examples:
    >>> import jax
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> _, traj = train_recipe_sampled(inst, "dr_grpo", 3, 1.0, jax.random.PRNGKey(0), samples=8)
    >>> bool(traj.reward[-1] > traj.reward[0])
    True
  """
  recipe = get_recipe(name)
  cfg = resolve_config(recipe, config)
  if recipe.step_field is not None:
    raise ConfigError(f"train_recipe_sampled runs the estimator of the whole field; {name!r} "
                      "splits its field across a state hook: use train_recipe")
  theta0 = obj.initial_logits(inst) if theta0 is None else jnp.asarray(theta0, inst.data.dtype)
  return _train_sampled(inst, theta0, jnp.asarray(lr, inst.data.dtype), key, name, int(steps),
                        int(samples), cfg)

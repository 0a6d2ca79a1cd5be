"""Where each construct and recipe ends on one tree (the rows of `compare` for a tree file).

Every row is evaluated on the leaf set (:func:`~nondecoupling.theory.tree.atomic.leaf_instance`;
every leaf distribution is an autoregressive policy): SFT loss L, reward J, J_β (the tree's ρ and
β), E_w KL(π‖ρ), E_w KL(d‖π), the decoupling regret of this project's D4, the expected length
E|y| (EOS counts) and a status. Rows:

- ``sft_exact`` (π = d) and ``token_mean_sft_exact`` (π_mean ∝ d/|y|, G2): the two SFT optima;
- ``sft_then_rl_exact``: the paper's closed form π*_β(d) on the leaf set (atomic engine);
- ``k1_reward``, ``k2_loss``, ``k3_loss``: the fixed points of the KL constructs (G4, closed
  forms by backward induction; k1_reward is π*_β(ρ));
- one row per :data:`~nondecoupling.theory.tree.recipes.registry.TREE_RECIPES` entry: ``steps``
  exact-field ascent steps from ρ with learning rate ``lr`` × u (u = 1/min_x w_x), by
  :func:`~nondecoupling.theory.tree.recipes.train.train_tree_recipe`. A recipe whose exact field
  is infeasible raises :class:`~nondecoupling.theory.recipes.InfeasibleExactField` (or a subclass)
  while it is traced; its row is then trained with its estimator (``SAMPLED_GROUPS`` calls per
  step, the atomic `compare`'s number), the row's kind says so and ``notice`` is called.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..theory import flows, frontier, objectives as obj
from ..theory.recipes import ConfigError, InfeasibleExactField, parse_option
from ..theory.tree import fixed_points, sft
from ..theory.tree.atomic import leaf_instance, leaf_policy
from ..theory.tree.instance import TreeInstance
from ..theory.tree.objectives import data_log_policy
from ..theory.tree.policy import flat_slots, leaf_lengths, policy_log_probs
from ..theory.tree.recipes.registry import TREE_RECIPES
from ..theory.tree.recipes.train import train_tree_recipe, train_tree_recipe_sampled
from .compare import SAMPLED_GROUPS
from .exported_programs import exported, exported_jit, exported_partial

__all__ = ["ROW_VALUES", "leaf_values", "path_values", "tree_compare_rows", "tree_recipe_configs",
           "time_unit"]

ROW_VALUES = ("sft_loss", "reward", "regularized_reward", "kl_reference", "kl_data", "regret",
              "expected_length")


def time_unit(tree: TreeInstance) -> float:
  """u = 1 / min_x w_x over real prompts (the atomic flows' time unit)."""
  w = [v for v in jnp.asarray(tree.prompt_weights).tolist() if v > 0]
  return 1.0 / min(w)


@jax.jit
def leaf_values(tree: TreeInstance, leaf_log_pi: jax.Array) -> dict:
  """The row values of a leaf policy log π(y|x) [X, Σ_t N_t k] (−∞ off the leaves)."""
  inst = leaf_instance(tree)
  lengths = flat_slots(leaf_lengths(tree))
  pi = jnp.where(inst.response_mask, jnp.exp(leaf_log_pi), 0.0)
  return {
      "sft_loss": obj.sft_loss(inst, leaf_log_pi),
      "reward": obj.reward(inst, leaf_log_pi),
      "regularized_reward": obj.regularized_reward(inst, leaf_log_pi),
      "kl_reference": obj.expect(inst, obj.kl_rows(leaf_log_pi, obj.safe_log(inst.reference))),
      "kl_data": obj.sft_excess(inst, leaf_log_pi),
      "regret": frontier.decoupling_regret(inst, leaf_log_pi),
      "expected_length": obj.expect(inst, jnp.sum(pi * lengths, axis=-1)),
  }


# The rows' programs are kept on disk (:mod:`.exported_programs`): a warm `compare` or `flow` of
# a tree file neither traces nor lowers them.
_stored_leaf_values = exported_jit(leaf_values, f"{__name__}.leaf_values")


def _row(tree, name, kind, leaf_log_pi, seconds, status="ok") -> dict:
  values = _stored_leaf_values(tree, leaf_log_pi)
  row = {"name": name, "kind": kind}
  row.update({k: float(values[k]) for k in ROW_VALUES})
  row["status"] = status
  row["seconds"] = seconds
  return row


def tree_recipe_configs(options=()) -> dict:
  """{name: config} of every tree recipe, with ``NAME.FIELD=VALUE`` options set (as the atomic
  :func:`~.compare.recipe_configs`; ConfigError naming the option and the rule)."""
  configs = {name: r.config for name, r in TREE_RECIPES.items()}
  for text in options:
    head, sep, value = str(text).partition("=")
    name, dot, field = head.strip().partition(".")
    if not sep or not dot or not name or not field:
      raise ConfigError(f"--recipe-option {text!r} is malformed, expected NAME.FIELD=VALUE")
    if name not in configs:
      known = ", ".join(TREE_RECIPES) or "none"
      raise ConfigError(f"--recipe-option {text!r}: no tree recipe {name!r} (tree recipes: "
                        f"{known})")
    if configs[name] is None or not dataclasses.is_dataclass(configs[name]):
      raise ConfigError(f"--recipe-option {text!r}: tree recipe {name!r} has no options")
    try:
      configs[name] = dataclasses.replace(
          configs[name], **{field.strip(): parse_option(configs[name], field.strip(), value)})
    except ConfigError as e:
      raise ConfigError(f"--recipe-option {text!r}: {e}") from None
  return configs


_leaf_of_logits = jax.jit(lambda tree, theta: leaf_policy(tree, policy_log_probs(tree, theta)))


@exported
def _leaf_data(tree):
  return leaf_policy(tree, data_log_policy(tree))


@exported
def _leaf_token_mean(tree):
  return leaf_policy(tree, sft.token_mean_optimum(tree))


@exported
def _leaf_sft_then_rl(tree):
  return flows.sft_then_rl_endpoint(leaf_instance(tree))


def _fixed_point_leaf(tree, *, construct: str):
  return leaf_policy(tree, fixed_points.closed_form_fixed_point(tree, construct))


def _leaf_fixed_point(tree, construct: str):
  return exported_partial(_fixed_point_leaf, construct=construct)(tree)


def _trained_leaf(tree, lr, *, recipe: str, cfg, steps: int):
  """The leaf policy after ``steps`` exact-field steps of ``recipe`` (``cfg`` prepared)."""
  theta, _ = train_tree_recipe(tree, TREE_RECIPES[recipe], steps, lr, cfg)
  return _leaf_of_logits(tree, theta)


def _timed(job):
  t0 = time.perf_counter()
  out = jax.block_until_ready(job())
  return out, time.perf_counter() - t0


def tree_compare_rows(tree: TreeInstance, steps: int = 200, lr: float = 0.5, configs=None,
                      progress=None, notice=None, key: jax.Array | None = None) -> list[dict]:
  """Every row of the module docstring, in order.

  Args:
    tree: an unbatched tree.
    steps: ascent steps per recipe; lr: learning rate in units of u.
    configs: {recipe name: config} (default: the published ones).
    progress: called with each row's name before it runs.
    notice: called with one line when a row falls back to its estimator.
    key: PRNG key of the estimator fallbacks (default PRNGKey(0)).

  Returns:
    list of row dicts (``name``, ``kind``, :data:`ROW_VALUES`, ``status``, ``seconds``; recipe
    rows also ``config``: the one the recipe ran with, as its ``prepare`` filled it on this
    tree, e.g. the reward levels an exact group field enumerates).
  """
  configs = tree_recipe_configs() if configs is None else configs
  key = jax.random.PRNGKey(0) if key is None else key
  jobs = [("sft_exact", "exact", lambda: _leaf_data(tree)),
          ("token_mean_sft_exact", "exact (G2)", lambda: _leaf_token_mean(tree)),
          ("sft_then_rl_exact", "exact (sequence)", lambda: _leaf_sft_then_rl(tree))]
  for c in fixed_points.CONSTRUCTS:
    jobs.append((c, "fixed point (G4)", lambda c=c: _leaf_fixed_point(tree, c)))
  rows = []
  for name, kind, job in jobs:
    if progress:
      progress(name)
    log_pi, seconds = _timed(job)
    rows.append(_row(tree, name, kind, log_pi, seconds))
  rate = lr * time_unit(tree)
  for name, recipe in TREE_RECIPES.items():
    if progress:
      progress(name)
    cfg = configs.get(name, recipe.config)
    t0 = time.perf_counter()
    try:
      # prepared on the concrete tree (what an exact group field enumerates: the row shows the
      # config as filled), then one program per (recipe, config, steps), kept on disk
      cfg = recipe.prepare(tree, cfg)
      train = exported_partial(_trained_leaf, recipe=name, cfg=cfg, steps=int(steps))
      row = _row(tree, name, "recipe", train(tree, np.asarray(rate, np.asarray(tree.prompt_weights).dtype)),
                 time.perf_counter() - t0)
    except InfeasibleExactField as e:
      if notice:
        notice(f"{name}: exact field infeasible ({e}); trained with its estimator averaged over "
               f"{SAMPLED_GROUPS} calls per step")
      try:
        theta, _ = train_tree_recipe_sampled(tree, recipe, steps, rate, key, SAMPLED_GROUPS, cfg)
        row = _row(tree, name, "recipe (Monte-Carlo)", _leaf_of_logits(tree, theta),
                   time.perf_counter() - t0,
                   status=f"monte_carlo: exact field infeasible ({e}); estimator averaged over "
                          f"{SAMPLED_GROUPS} calls per step")
      except InfeasibleExactField as e2:
        row = {"name": name, "kind": "recipe", **{k: None for k in ROW_VALUES},
               "status": f"error: exact field and estimator infeasible ({e2})",
               "seconds": time.perf_counter() - t0}
    row["config"] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None
    rows.append(row)
  return rows


@exported
def _path_values(tree: TreeInstance, thetas) -> dict:
  return jax.vmap(lambda th: leaf_values(tree, _leaf_of_logits(tree, th)))(thetas)


def path_values(tree: TreeInstance, thetas) -> dict:
  """{value: [P]} of :data:`ROW_VALUES` at each recorded logits θ_i (leading axis P)."""
  return _path_values(tree, thetas)

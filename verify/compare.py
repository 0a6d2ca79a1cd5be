"""Where every pipeline and fusion recipe ends on one instance (the rows of `compare`).

Each row holds the end point's SFT loss L, reward J, regularised reward J_β (the instance's ρ and
β), the decoupling regret of this project's D4, E_w KL(d‖π) and E_w KL(π‖ρ).

Defaults (u = 1 / min_x w_x, the flows' time unit; see theory/flows.py):

- ``sft_then_rl_exact``: the paper's closed form π*_β(d) (Gibbs tilt of the data, instance β);
- ``sft_then_rl``: SFT flow 5u from ρ, then RL flow 5u with the SFT end policy as reference;
- ``rl_then_sft``: RL flow 5u from ρ (reference ρ), then SFT flow 5u;
- ``alternating``: SFT and RL flows alternating every u for 10u, starting with SFT;
- ``joint``: the flow of L − λJ_β with λ = 1 for 10u;
- recipes (published defaults, or the configs given; :func:`recipe_configs` reads
  ``NAME.FIELD=VALUE`` options): ``recipe_steps`` exact-field ascent steps from ρ with learning
  rate ``recipe_lr`` × u. When a recipe's exact group expectation is infeasible it is trained with
  its unbiased estimator (``SAMPLED_GROUPS`` groups per step) and the row says so.

A flow row also says which solver ran (``solver``: explicit, implicit or both, see
theory/flows.py) and how many steps it took. A flow that does not reach its end (its step budget
ran out) gets ``"status": "error: ..."`` saying where it stopped, and null numbers: never numbers
that look like a result.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from ..theory import flows, frontier, objectives as obj
from ..theory.recipes import (
  FUSION_RECIPES,
  ConfigError,
  InfeasibleExactField,
  get_recipe,
  parse_option,
  resolve_config,
  train_recipe,
  train_recipe_sampled,
)
from .exported_programs import exported, exported_partial

__all__ = ["compare_rows", "flow_row", "flow_status", "recipe_configs", "default_flow_call",
           "DEFAULT_RECIPE_STEPS", "DEFAULT_RECIPE_LR", "SAMPLED_GROUPS"]

DEFAULT_RECIPE_STEPS = 200
DEFAULT_RECIPE_LR = 0.5
SAMPLED_GROUPS = 512  # groups per step when a recipe's exact field is infeasible


_VALUES = ("sft_loss", "reward", "regularized_reward", "regret", "kl_data", "kl_reference")


# Every program of a `compare` is kept on disk (:mod:`.exported_programs`): a warm `compare`
# neither traces nor lowers them.
@exported
def _row_values(inst, log_pi) -> dict:
  return dict(
      sft_loss=obj.sft_loss(inst, log_pi),
      reward=obj.reward(inst, log_pi),
      regularized_reward=obj.regularized_reward(inst, log_pi),
      regret=frontier.decoupling_regret(inst, log_pi),
      kl_data=obj.sft_excess(inst, log_pi),
      kl_reference=obj.expect(inst, obj.kl_rows(log_pi, obj.safe_log(inst.reference))))


@exported
def _sft_then_rl(inst):
  return flows.sft_then_rl_endpoint(inst)


def default_flow_call(inst, schedule) -> tuple[str, tuple]:
  """(solver, arguments) of :func:`flows.flow_trajectory` for :func:`flows.run_flow` with its
  default tolerances and step budget: what a caller that keeps the program on disk compiles."""
  method = flows.resolve_method("auto", inst, schedule.duration, schedule.sft_weight,
                                schedule.rl_weight)
  return method, (inst, schedule, None, np.float64(1e-8), np.float64(1e-10),
                  np.int64(flows.DEFAULT_MAX_STEPS))


def _pipeline(inst, name: str, n_save: int):
  """:func:`flows.run_pipeline` (default tolerances) as a program kept on disk."""
  method, args = default_flow_call(inst, flows.pipeline_schedule(name, inst))
  return exported_partial(flows.flow_trajectory, optimise=True, n_save=n_save,
                          method=method)(*args)


def _trained_policy(inst, lr, *, name: str, cfg, steps: int):
  return train_recipe(inst, name, steps, lr, cfg)[0]


def _trained(inst, name: str, steps: int, lr: float, config):
  """:func:`train_recipe`'s final policy; the config completed on the concrete instance
  first, then one program per (recipe, config, steps) kept on disk."""
  cfg = resolve_config(get_recipe(name), config, inst)
  program = exported_partial(_trained_policy, name=name, cfg=cfg, steps=int(steps))
  return program(inst, np.asarray(lr, np.asarray(inst.data).dtype))


def _row(inst, name, kind, log_pi, seconds):
  values = _row_values(inst, log_pi)
  row = {"name": name, "kind": kind}
  row.update({k: float(np.asarray(v)) for k, v in values.items()})
  row["status"] = "ok"
  row["seconds"] = seconds
  return row


def recipe_configs(options=()) -> dict:
  """The config of every recipe ``compare`` runs, with ``NAME.FIELD=VALUE`` options set.

  A recipe's options are set together (their order does not matter; a later value of the same
  field wins), then the config's rules are checked.

  Args:
    options: texts such as ``grpo.group_size=4`` or ``luffy.shaping_gamma=none``.

  Returns:
    {name: config} for every name in FUSION_RECIPES (published defaults where no option is given).

  Raises:
    ConfigError: one line naming the option and the rule it breaks (malformed text, a recipe
      ``compare`` does not run, an unknown field, a value that does not parse or breaks the
      field's rule).
  """
  defaults = {name: get_recipe(name).config for name in FUSION_RECIPES}
  values: dict[str, dict] = {name: {} for name in FUSION_RECIPES}
  texts: dict[str, list] = {name: [] for name in FUSION_RECIPES}
  for text in options:
    head, sep, value = str(text).partition("=")
    name, dot, field = head.strip().partition(".")
    if not sep or not dot or not name or not field:
      raise ConfigError(f"--recipe-option {text!r} is malformed, expected NAME.FIELD=VALUE "
                        "(e.g. grpo.group_size=4)")
    if name not in defaults:
      raise ConfigError(f"--recipe-option {text!r}: compare runs no recipe {name!r} (it runs: "
                        f"{', '.join(FUSION_RECIPES)})")
    try:
      values[name][field.strip()] = parse_option(defaults[name], field.strip(), value)
    except ConfigError as e:
      raise ConfigError(f"--recipe-option {text!r}: {e}") from None
    texts[name].append(str(text))
  configs = {}
  for name, cfg in defaults.items():
    try:
      configs[name] = dataclasses.replace(cfg, **values[name]) if values[name] else cfg
    except ConfigError as e:
      raise ConfigError(f"--recipe-option {' '.join(texts[name])}: {e}") from None
  return configs


def flow_status(trajectory, schedule, max_steps: int = flows.DEFAULT_MAX_STEPS) -> str:
  """"ok", or "error: ..." naming the first phase whose solve stopped short and where."""
  phase_ok = np.asarray(trajectory.phase_ok)
  if phase_ok.all():
    return "ok"
  p = int(np.argmin(phase_ok))
  solver = "implicit (Rodas5P)" if bool(np.asarray(trajectory.stiff)[p]) else (
      "explicit (Dormand–Prince 5(4))")
  return (f"error: the flow did not reach the end of phase {p} with the {solver} solver: it "
          f"stopped at t = {float(np.asarray(trajectory.reached)[p]):.6g} of "
          f"{float(np.asarray(schedule.duration)[p]):.6g} after "
          f"{int(np.asarray(trajectory.steps)[p])} accepted and "
          f"{int(np.asarray(trajectory.rejected)[p])} rejected steps (budget {max_steps})")


def flow_row(inst, name: str, trajectory, schedule, seconds: float,
             max_steps: int = flows.DEFAULT_MAX_STEPS) -> dict:
  """The compare row of a pipeline run as a flow (null numbers unless every phase finished)."""
  status = flow_status(trajectory, schedule, max_steps)
  if status == "ok":
    row = _row(inst, name, "flow", trajectory.final_log_pi, seconds)
  else:
    row = {"name": name, "kind": "flow", **{k: None for k in _VALUES}, "status": status,
           "seconds": seconds}
  stiff = np.asarray(trajectory.stiff)
  row["solver"] = "implicit" if stiff.all() else ("explicit" if not stiff.any() else
                                                  "explicit+implicit")
  row["steps"] = int(np.sum(np.asarray(trajectory.steps)))
  return row


def compare_rows(inst, recipe_steps: int = DEFAULT_RECIPE_STEPS,
                 recipe_lr: float = DEFAULT_RECIPE_LR, progress=None,
                 configs: dict | None = None) -> list[dict]:
  """Runs every pipeline and recipe on ``inst`` and returns one row per end point.

  ``configs`` maps a recipe name to its config (default: :func:`recipe_configs`, the published
  defaults); each recipe row carries the config it ran with under ``"config"``.
  """
  configs = recipe_configs() if configs is None else {**recipe_configs(), **configs}
  unit = float(flows.time_unit(inst))
  jobs = [("sft_then_rl_exact", "exact", lambda: _sft_then_rl(inst))]
  for name in flows.PIPELINE_NAMES:
    jobs.append((name, "flow", lambda name=name: _pipeline(inst, name, 2)))
  for name in FUSION_RECIPES:
    jobs.append((name, "recipe", lambda name=name: _trained(
        inst, name, recipe_steps, recipe_lr * unit, configs[name])))
  rows = []
  for name, kind, job in jobs:
    if progress:
      progress(name)
    t0 = time.perf_counter()
    if kind == "flow":
      trajectory = jax.block_until_ready(job())
      rows.append(flow_row(inst, name, trajectory, flows.pipeline_schedule(name, inst),
                           time.perf_counter() - t0))
      continue
    try:
      log_pi = jax.block_until_ready(job())
    except InfeasibleExactField as e:
      # Too many reward levels to enumerate GRPO's std-normalised groups exactly: train with the
      # recipe's unbiased Monte-Carlo estimator instead, and say so in the row.
      if get_recipe(name).step_field is not None:
        raise ConfigError(f"{name}: {e}") from None  # its state hook needs the exact field
      log_pi, _ = train_recipe_sampled(inst, name, recipe_steps, recipe_lr * unit,
                                       jax.random.PRNGKey(0), samples=SAMPLED_GROUPS,
                                       config=configs[name])
      row = _row(inst, name, "recipe (Monte-Carlo)", jax.block_until_ready(log_pi),
                 time.perf_counter() - t0)
      row["status"] = (f"monte_carlo: exact field infeasible ({e}); estimator averaged over "
                       f"{SAMPLED_GROUPS} groups per step")
      row["config"] = dataclasses.asdict(configs[name])
      rows.append(row)
      continue
    row = _row(inst, name, kind, log_pi, time.perf_counter() - t0)
    if kind == "recipe":
      row["config"] = dataclasses.asdict(configs[name])
    rows.append(row)
  return rows

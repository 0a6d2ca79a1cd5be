"""nondecoupling: exact checks of whether SFT and KL-regularised RL can be run as separate stages.

``import nondecoupling as nd`` gives the public API below; each name is loaded on first use (so the
command line starts without JAX). The sub-packages are ``nd.theory`` (exact mathematics on tabular
softmax policies, float64), ``nd.verify`` (statements, random families, the counterexample search,
reports, the Qwen3 bridge) and ``nd.figures`` (every figure as a matplotlib Figure).

Examples:
  >>> import nondecoupling as nd
  >>> inst = nd.make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], beta=1.0)
  >>> round(float(nd.c1(nd.rl_stage_after_sft(inst))), 6)  # Theorem 3.1's C₁(β) = log((1+e)/2) − ½
  0.120115

References:
  Niu, Bai, Han, Zhang, "On the Non-decoupling of Supervised Fine-tuning and Reinforcement
  Learning in Post-training", arXiv 2601.07389 (2026).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
  __version__ = version("nondecoupling")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
  __version__ = "unknown"

# name -> module (relative to this package) that defines it.
_API = {
    # the problem and its validation
    "Instance": "theory.instance", "InstanceError": "theory.instance",
    "make_instance": "theory.instance", "validate": "theory.instance",
    "pad_instance": "theory.instance", "unpad_instance": "theory.instance",
    "stack": "theory.instance", "index": "theory.instance", "with_reference": "theory.instance",
    "rl_stage_after_sft": "theory.instance",
    # objectives and exact quantities
    "sft_loss": "theory.objectives", "sft_optimum_loss": "theory.objectives",
    "sft_excess": "theory.objectives", "reward": "theory.objectives",
    "regularized_reward": "theory.objectives", "log_partition": "theory.objectives",
    "gibbs_tilt": "theory.objectives", "rl_value": "theory.objectives", "c1": "theory.objectives",
    "kl_rows": "theory.objectives", "policy_log_probs": "theory.objectives",
    "initial_logits": "theory.objectives", "sft_grad": "theory.objectives",
    "rl_grad": "theory.objectives", "check_quantities": "theory.quantities",
    "batch_check_quantities": "theory.quantities",
    "beta_critical": "theory.statements.critical_beta", "Verdict": "theory.verdict",
    # the frontier and decoupling regret (this project's D4)
    "frontier_policy": "theory.frontier", "frontier_curve": "theory.frontier",
    "frontier_at_reward": "theory.frontier", "decoupling_regret": "theory.frontier",
    "rl_path_curve": "theory.frontier", "rl_path_regret": "theory.frontier",
    # flows and pipelines
    "run_flow": "theory.flows", "run_steps": "theory.optimizer_steps", "run_pipeline": "theory.flows",
    "pipeline_schedule": "theory.flows", "sft_then_rl_endpoint": "theory.flows",
    "PIPELINE_NAMES": "theory.flows",
    # fusion recipes
    "RECIPES": "theory.recipes", "FUSION_RECIPES": "theory.recipes",
    "recipe_field": "theory.recipes", "recipe_sample": "theory.recipes",
    "train_recipe": "theory.recipes", "train_recipe_sampled": "theory.recipes",
    # verification and files
    "read_instance": "verify.io", "write_instance": "verify.io",
    "instance_from_dict": "verify.io", "all_statements": "verify.registry",
    "run_verify": "verify.checking", "instance_margins": "verify.margins",
    "compare_rows": "verify.compare", "enable_compile_cache": "verify.compile_cache",
}
_SUBPACKAGES = ("theory", "verify", "figures")

__all__ = sorted(_API) + list(_SUBPACKAGES) + ["__version__"]


def __getattr__(name: str):
  if name in _SUBPACKAGES:
    return importlib.import_module(f"{__name__}.{name}")
  if name in _API:
    value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return __all__

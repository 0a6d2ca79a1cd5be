"""The registry of statements `verify` checks (THEORY.md parts B, C, D), in report order.

Exact statements have an unbatched ``fn(instance, probe_log_pi) -> Verdict`` that the sweep vmaps;
``probe_log_pi`` is a policy on which policy-dependent statements are evaluated (RL-then-SFT
statements use π₂ = d, the exact SFT optimum, so that a counterexample is an instance file).
Statements on integrated flows (D2 on flows, D5-D7) have a batched ``check`` instead
(:mod:`.flow_checks`). No statement has a fixed tolerance: each Verdict carries its own rounding
bound (``slack``, :mod:`nondecoupling.theory.verdict`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..theory.instance import Instance
from ..theory.objectives import policy_log_probs
from ..theory.statements import (
  critical_beta,
  identities,
  initial_rates,
  joint_bound,
  rl_then_sft,
  sft_then_rl,
)
from ..theory.statements.identities import clip_logits
from . import flow_checks
from .statement import Statement
from .stored_programs import storable
from .tree_checks import TREE_STATEMENTS
from .tree_group_checks import TREE_GROUP_STATEMENTS

__all__ = ["STATEMENTS", "FLOW_STATEMENTS", "all_statements", "statement_by_name",
           "policy_from_logits"]

def _named(call, f, kind: str):
  """``call`` with ``program_name``: the key name its programs are stored under
  (:func:`~.stored_programs.program_name`), when ``f`` is a module-level function of ours."""
  call.program_name = f"{f.__module__}.{f.__qualname__}[{kind}]" if storable(f) else None
  return call


def _no_probe(f):
  return _named(lambda inst, probe: f(inst), f, "no_probe")


def _probe_policy(f):
  """f(inst, log_pi) evaluated at the probe (already log-probabilities)."""
  return _named(lambda inst, probe: f(inst, probe), f, "probe_policy")


def _probe_logits(f):
  """f(inst, theta) evaluated at finite logits made from the probe."""
  return _named(lambda inst, probe: f(inst, clip_logits(probe)), f, "probe_logits")


# RL-then-SFT statements are evaluated at π₂ = d (the exact SFT optimum after RL), so that a
# counterexample is an instance file: like probe-free statements they ignore the probe.
_pipeline = _no_probe


def _s(name, title, source, expected, kind, fn, uses_probe=False):
  """A statement; it fails where its margin is below minus its Verdict's rounding slack."""
  return Statement(name, title, source, expected, kind, fn, uses_probe)


STATEMENTS: tuple[Statement, ...] = (
    # B: exact identities (standard facts this project states and checks; THEORY.md part B).
    _s("B1 sft_excess_is_kl", "L(π) − L(d) = E KL(d‖π)", "ours", "holds", "identity",
       _probe_policy(identities.sft_excess_is_kl), uses_probe=True),
    _s("B2 gibbs_variational", "J_β(π) = β E log Z − β E KL(π‖π*)", "ours", "holds", "identity",
       _probe_policy(identities.gibbs_variational), uses_probe=True),
    _s("B3 sft_loss_after_rl", "L(π*_β) − L(ρ) = C₁(β; ρ)", "ours", "holds", "identity",
       _no_probe(identities.sft_loss_after_rl)),
    _s("B4 reward_change_after_rl", "J(π₂) − J(π₁) = −βKL(π₂‖π₁) + β(KL(π₂‖ρ) − KL(π₁‖ρ))",
       "ours", "holds", "identity", _probe_policy(identities.reward_change_after_rl),
       uses_probe=True),
    _s("B5 gradients_closed_form", "closed-form ∇L, ∇J_β = jax.grad", "ours", "holds", "identity",
       _probe_logits(identities.gradients_closed_form), uses_probe=True),
    # C1: Theorem 3.1 and the bounds reported beside it.
    _s("C1 theorem_3_1", "ρ = d: L(π*_β) = L(d) + C₁(β)", "paper", "holds", "identity",
       _no_probe(sft_then_rl.theorem_3_1)),
    _s("C1 c1_nonnegative", "C₁(β) ≥ 0 (Jensen gap)", "paper", "holds", "bound",
       _no_probe(sft_then_rl.c1_nonnegative)),
    _s("C1 c1_is_kl", "C₁(β) = E KL(d‖π*_β)", "ours", "holds", "identity",
       _no_probe(sft_then_rl.c1_is_kl)),
    _s("C1 c1_zero_iff_constant", "C₁ = 0 when r is constant on supp d", "ours", "holds",
       "identity", _no_probe(sft_then_rl.c1_zero_when_constant)),
    _s("C1 c1_positive_otherwise", "C₁ > 0 when r is not constant on supp d", "ours", "holds",
       "strict", _no_probe(sft_then_rl.c1_positive_otherwise)),
    _s("C1 hoeffding_bound", "C₁ ≤ E(max r − min r)²/(8β²)", "ours", "holds", "bound",
       _no_probe(sft_then_rl.c1_hoeffding_bound)),
    _s("C1 sup_bound", "C₁ ≤ E[max r − E_d r]/β", "ours", "holds", "bound",
       _no_probe(sft_then_rl.c1_sup_bound)),
    _s("C1 large_beta_limit", "|C₁ − E Var/(2β²)| ≤ E range³/(36√3 β³)", "ours", "holds", "bound",
       _no_probe(sft_then_rl.c1_large_beta_limit)),
    _s("C1 small_beta_limit", "E[max r − E_d r] − βC₁ ≤ −β E log d(argmax)", "ours", "holds",
       "bound", _no_probe(sft_then_rl.c1_small_beta_limit)),
    # C2-C4: RL-then-SFT with π₁ = π*_β(ρ), π₂ = d.
    _s("C2 proposition_1", "J(π₂) ≤ J(π₁) + R_max √(2B)", "paper", "holds", "bound",
       _pipeline(rl_then_sft.proposition_1)),
    _s("C2 proposition_1_sharp", "J(π₂) ≤ J(π₁) + E[(max r − min r)√(KL/2)]", "ours", "holds",
       "bound", _pipeline(rl_then_sft.proposition_1_sharp)),
    _s("C3 theorem_4_1_as_printed", "a ≤ E KL(π₂‖π₁) ≤ A ⇒ J(π₂) ≤ J(π₁) − C₂, C₂ > 0",
       "paper", "refuted", "strict", _pipeline(rl_then_sft.theorem_4_1_as_printed)),
    _s("C4 theorem_4_1_repaired", "J_β(π₂) = J_β(π₁) − β E KL(π₂‖π₁)", "ours", "holds",
       "identity", _pipeline(rl_then_sft.theorem_4_1_repaired)),
    _s("C4 reward_drop_criterion", "J(π₁) − J(π₂) = β(KL(π₂‖π₁) − [KL(π₂‖ρ) − KL(π₁‖ρ)])",
       "ours", "holds", "identity", _pipeline(rl_then_sft.reward_drop_criterion)),
    # D1-D3: this project's results.
    _s("D1 rl_lowers_sft_needs_reward_gain", "C₁(β; ρ) < 0 ⇒ E_d r > E_ρ r", "ours", "holds",
       "strict", _no_probe(critical_beta.rl_lowers_sft_needs_reward_gain)),
    _s("D1 critical_beta_root", "β_c C₁(β_c; ρ) = 0", "ours", "holds", "identity",
       _no_probe(critical_beta.critical_beta_root)),
    _s("D1 critical_beta_sign", "C₁(β; ρ) < 0 ⟺ β > β_c", "ours", "holds", "bound",
       _no_probe(critical_beta.critical_beta_sign)),
    _s("D2 rl_slope_at_start", "dL/dt(0) = Σ w² Σ (ρ − d)ρ(r − E_ρ r)", "ours", "holds",
       "identity", _no_probe(initial_rates.rl_slope_at_start)),
    _s("D2 rl_curvature_at_sft_optimum", "ρ = d: d²L/dt²(0) = gᵀ H_L g", "ours", "holds",
       "identity", _no_probe(initial_rates.rl_curvature_at_sft_optimum)),
    _s("D3 joint_bound", "√(ΔL/2) + √(ΔJ_β/(2β)) ≥ E TV(d, π*)", "ours", "holds", "bound",
       _probe_policy(joint_bound.joint_bound), uses_probe=True),
)




def _flow_statement(name, title, kind, check):
  """A statement on flows: its check returns Verdicts whose slack includes the solver's error."""
  return Statement(name=name, title=title, source="ours", expected="holds", kind=kind, fn=None,
                   uses_probe=False, check=check)


FLOW_STATEMENTS: tuple[Statement, ...] = (
    _flow_statement(
        "D2 rl_flow_finite_differences",
        "flow finite differences = closed-form dL/dt(0), d²L/dt²(0) (rel. 1e-4)", "bound",
        flow_checks.check_d2_flow),
    _flow_statement("D5 pl_rl", "‖∇J_β‖² ≥ 2β min w (min π)² (J_β* − J_β)", "bound",
                    flow_checks.check_pl_rl),
    _flow_statement("D5 pl_sft", "‖∇L‖² ≥ min w min π (L − L(d))", "bound",
                    flow_checks.check_pl_sft),
    _flow_statement("D5 pl_decay_rl", "RL flow: gap(t) ≤ gap(0) exp(−2∫μ_RL)", "bound",
                    flow_checks.check_decay_rl),
    _flow_statement("D5 pl_decay_sft", "SFT flow: gap(t) ≤ gap(0) exp(−2∫μ_SFT)", "bound",
                    flow_checks.check_decay_sft),
    _flow_statement(
        "D6 spectral_misalignment",
        "|⟨∇_xL, ∇_xJ_β⟩| ≤ w²β λ_max(F)² ‖P(d/π)‖ ‖P log(π*/π)‖ ≤ (max π)² form", "bound",
        flow_checks.check_spectral),
    _flow_statement("D7 pl_time", "RL flow from d: gap(t_ε) ≤ ε gap(0), t_ε = ln(1/ε)/(2μ_min)",
                    "bound", flow_checks.check_d7_pl_time),
    _flow_statement("D7 optimal_duration_argmax", "t*(λ) maximises J − λL along the RL flow from d",
                    "bound", flow_checks.check_d7_argmax),
)


def all_statements() -> tuple[Statement, ...]:
  """Every statement: the exact ones, those on flows (D2 on flows, D5-D7), then the token level
  (G1–G4 on random trees, :mod:`.tree_checks`; G5 on small group trees,
  :mod:`.tree_group_checks`)."""
  return STATEMENTS + FLOW_STATEMENTS + TREE_STATEMENTS + TREE_GROUP_STATEMENTS


def statement_by_name(name: str) -> Statement:
  """The statement with this name, or with this name after its label (e.g. ``theorem_3_1``)."""
  for s in all_statements():
    if s.name == name or s.name.split(" ", 1)[-1] == name:
      return s
  raise KeyError(name)


def policy_from_logits(inst: Instance, theta: jax.Array) -> jax.Array:
  """Probe log-policy from finite logits (masked to the RL support)."""
  return policy_log_probs(inst, jnp.asarray(theta))

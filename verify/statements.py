"""The registry of statements that `verify` checks: name, source, expected outcome, function.

Each statement's ``fn(instance, probe_log_pi) -> Verdict`` is unbatched; the sweep vmaps it.
``probe_log_pi`` is a policy on which policy-dependent statements are evaluated (RL-then-SFT
statements use π₂ = d, the exact SFT optimum, so that a counterexample is an instance file).

Sources: ``paper`` (arXiv 2601.07389 v1, as printed) or ``ours`` (this project's statements,
THEORY.md parts B and D, and the repaired Theorem 4.1). Expected: ``holds`` or ``refuted``.
A statement holds on an instance when ``margin >= -tolerance`` (``margin > tolerance`` when
strict); instances where its hypothesis does not apply are not counted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from theory import identities, ours, paper
from theory.identities import clip_logits
from theory.instance import Instance
from theory.objectives import policy_log_probs
from theory.verdict import Verdict

__all__ = ["Statement", "STATEMENTS", "statement_by_name", "holds_mask", "all_statements"]

IDENTITY_TOL = 1e-9   # relative residual of float64 identities (rounding over a few sums/logs)
BOUND_TOL = 1e-10     # absolute slack of inequalities
STRICT_TOL = 1e-12    # a strict statement needs margin above this (C₂ > 0 beyond rounding)


@dataclasses.dataclass(frozen=True)
class Statement:
  """One checkable statement.

  Attributes:
    name: short id, e.g. ``"C3 theorem_4_1_as_printed"``.
    title: one line for tables.
    source: ``"paper"`` or ``"ours"``.
    expected: ``"holds"`` or ``"refuted"``.
    kind: ``"identity"``, ``"bound"`` (lhs ≤ rhs or lhs ≥ rhs; tightness = lhs/rhs) or
      ``"strict"``.
    fn: unbatched ``(Instance, probe_log_pi [X, Y]) -> Verdict``.
    tolerance: see module docstring.
    uses_probe: whether ``fn`` depends on the probe policy (the search then draws one).
    check: optional batched override ``(batch Instance, key) -> margins [B]`` or a Verdict of
      [B] arrays, for statements that need more than one instance-and-policy (dynamics).
  """

  name: str
  title: str
  source: str
  expected: str
  kind: str
  fn: Callable[[Instance, jax.Array], Verdict] | None
  tolerance: float
  uses_probe: bool = False
  check: Callable | None = None

  @property
  def strict(self) -> bool:
    return self.kind == "strict"


def holds_mask(stmt: Statement, margin):
  """Elementwise: does the statement hold at this margin?"""
  if stmt.strict:
    return margin > stmt.tolerance
  return margin >= -stmt.tolerance


def _no_probe(f):
  return lambda inst, probe: f(inst)


def _probe_policy(f):
  """f(inst, log_pi) evaluated at the probe (already log-probabilities)."""
  return lambda inst, probe: f(inst, probe)


def _probe_logits(f):
  """f(inst, theta) evaluated at finite logits made from the probe."""
  return lambda inst, probe: f(inst, clip_logits(probe))


# RL-then-SFT statements are evaluated at π₂ = d (the exact SFT optimum after RL), so that a
# counterexample is an instance file: like probe-free statements they ignore the probe.
_pipeline = _no_probe


def _s(name, title, source, expected, kind, fn, tol=None, uses_probe=False):
  if tol is None:
    tol = {"identity": IDENTITY_TOL, "bound": BOUND_TOL, "strict": STRICT_TOL}[kind]
  return Statement(name, title, source, expected, kind, fn, tol, uses_probe)


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
       _no_probe(paper.theorem_3_1)),
    _s("C1 c1_nonnegative", "C₁(β) ≥ 0 (Jensen gap)", "paper", "holds", "bound",
       _no_probe(paper.c1_nonnegative)),
    _s("C1 c1_is_kl", "C₁(β) = E KL(d‖π*_β)", "ours", "holds", "identity",
       _no_probe(paper.c1_is_kl)),
    _s("C1 c1_zero_iff_constant", "C₁ = 0 when r is constant on supp d", "ours", "holds",
       "identity", _no_probe(paper.c1_zero_when_constant)),
    _s("C1 c1_positive_otherwise", "C₁ > 0 when r is not constant on supp d", "ours", "holds",
       "strict", _no_probe(paper.c1_positive_otherwise), tol=0.0),
    _s("C1 hoeffding_bound", "C₁ ≤ E(max r − min r)²/(8β²)", "ours", "holds", "bound",
       _no_probe(paper.c1_hoeffding_bound)),
    _s("C1 sup_bound", "C₁ ≤ E[max r − E_d r]/β", "ours", "holds", "bound",
       _no_probe(paper.c1_sup_bound)),
    _s("C1 large_beta_limit", "|C₁ − E Var/(2β²)| ≤ E range³/(36√3 β³)", "ours", "holds", "bound",
       _no_probe(paper.c1_large_beta_limit)),
    _s("C1 small_beta_limit", "E[max r − E_d r] − βC₁ ≤ −β E log d(argmax)", "ours", "holds",
       "bound", _no_probe(paper.c1_small_beta_limit)),
    # C2-C4: RL-then-SFT with π₁ = π*_β(ρ), π₂ = d.
    _s("C2 proposition_1", "J(π₂) ≤ J(π₁) + R_max √(2B)", "paper", "holds", "bound",
       _pipeline(paper.proposition_1)),
    _s("C2 proposition_1_sharp", "J(π₂) ≤ J(π₁) + E[(max r − min r)√(KL/2)]", "ours", "holds",
       "bound", _pipeline(paper.proposition_1_sharp)),
    _s("C3 theorem_4_1_as_printed", "a ≤ E KL(π₂‖π₁) ≤ A ⇒ J(π₂) ≤ J(π₁) − C₂, C₂ > 0",
       "paper", "refuted", "strict", _pipeline(paper.theorem_4_1_as_printed)),
    _s("C4 theorem_4_1_repaired", "J_β(π₂) = J_β(π₁) − β E KL(π₂‖π₁)", "ours", "holds",
       "identity", _pipeline(paper.theorem_4_1_repaired)),
    _s("C4 reward_drop_criterion", "J(π₁) − J(π₂) = β(KL(π₂‖π₁) − [KL(π₂‖ρ) − KL(π₁‖ρ)])",
       "ours", "holds", "identity", _pipeline(paper.reward_drop_criterion)),
    # D1-D3: this project's results.
    _s("D1 rl_lowers_sft_needs_reward_gain", "C₁(β; ρ) < 0 ⇒ E_d r > E_ρ r", "ours", "holds",
       "strict", _no_probe(ours.rl_lowers_sft_needs_reward_gain), tol=0.0),
    _s("D1 critical_beta_root", "β_c C₁(β_c; ρ) = 0", "ours", "holds", "identity",
       _no_probe(ours.critical_beta_root), tol=1e-9),
    _s("D1 critical_beta_sign", "C₁(β; ρ) < 0 ⟺ β > β_c", "ours", "holds", "bound",
       _no_probe(ours.critical_beta_sign), tol=1e-9),
    _s("D2 rl_slope_at_start", "dL/dt(0) = Σ w² Σ (ρ − d)ρ(r − E_ρ r)", "ours", "holds",
       "identity", _no_probe(ours.rl_slope_at_start)),
    _s("D2 rl_curvature_at_sft_optimum", "ρ = d: d²L/dt²(0) = gᵀ H_L g", "ours", "holds",
       "identity", _no_probe(ours.rl_curvature_at_sft_optimum)),
    _s("D3 joint_bound", "√(ΔL/2) + √(ΔJ_β/(2β)) ≥ E TV(d, π*)", "ours", "holds", "bound",
       _probe_policy(ours.joint_bound), uses_probe=True),
)


def all_statements() -> tuple[Statement, ...]:
  """The core statements plus the dynamics statements (flows; THEORY.md D2, D5-D7)."""
  from verify import dynamics_statements
  return STATEMENTS + tuple(getattr(dynamics_statements, "DYNAMICS_STATEMENTS", ()))


def statement_by_name(name: str) -> Statement:
  for s in all_statements():
    if s.name == name or s.name.split(" ", 1)[-1] == name:
      return s
  raise KeyError(name)


def policy_from_logits(inst: Instance, theta: jax.Array) -> jax.Array:
  """Probe log-policy from finite logits (masked to the RL support)."""
  return policy_log_probs(inst, jnp.asarray(theta))

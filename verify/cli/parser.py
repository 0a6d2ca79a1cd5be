"""The whole command-line surface of `nondecoupling`: every command and its options.

Only argparse and the value types are imported here, so that ``nondecoupling --help`` answers at
once. Each command names its handler as ``"module:function"`` of this package; ``main`` imports
that module only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from .args import non_negative_int, positive_float, positive_int

__all__ = ["UsageError", "build_parser", "DEFAULT_LAMBDAS"]

DEFAULT_LAMBDAS = "0,0.1,0.3,1,3,10"
PIPELINES = ("sft_then_rl", "rl_then_sft", "alternating", "joint")
DEFAULT_RECIPE_STEPS = 200
DEFAULT_RECIPE_LR = 0.5
DEFAULT_TREE_STEPS = 2000
TREE_CONSTRUCTS = ("k1_reward", "k2_loss", "k3_loss")  # theory.tree.fixed_points.CONSTRUCTS


def _input_limit(p) -> None:
  p.add_argument("--max-bytes", type=positive_int, default=None, metavar="N",
                 help="largest instance file read, in bytes (default 268435456 = 256 MiB)")


def _resource_limits(p) -> None:
  p.add_argument("--max-memory", type=positive_float, default=None, metavar="GB",
                 help="refuse to start when the estimated memory exceeds GB gigabytes (10^9 "
                      "bytes; default: the memory available when the command starts)")
  p.add_argument("--max-seconds", type=positive_float, default=None, metavar="S",
                 help="refuse to start when the estimated run time exceeds S seconds (default "
                      "3600)")


def _tree_input(p) -> None:
  p.add_argument("--allow-large", action="store_true",
                 help="tree files: allow vocabularies over 64 tokens and lengths over 12")


TREE_FILE_NOTE = (" FILE may also be a tree file (token level, THEORY.md part G; the format of "
                  "verify/tree_io.py): the command then runs on its leaf set and nodes.")


class _Version(argparse.Action):
  """--version: one line, never wrapped (argparse's own action wraps it to the terminal)."""

  def __init__(self, option_strings, version, dest=argparse.SUPPRESS, help=None):
    super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
    self.version = version

  def __call__(self, parser, namespace, values, option_string=None):
    sys.stdout.write(self.version + "\n")
    parser.exit()


class UsageError(Exception):
  """A command-line usage problem; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
  """argparse that reports usage errors as one line and exit 2 (no usage dump)."""

  def error(self, message):  # noqa: D401 - argparse API
    raise UsageError(f"{self.prog}: {message}")


def build_parser(version: str = "") -> argparse.ArgumentParser:
  """The `nondecoupling` parser with every sub-command."""
  parser = _Parser(
      prog="nondecoupling",
      description="Exact checks of the non-decoupling of SFT and KL-regularised RL "
                  "(arXiv 2601.07389) on tabular instances and real Qwen3 logits.")
  parser.add_argument("--version", action=_Version, version=f"nondecoupling {version}",
                      help="print the version and the git commit, and exit")
  parser.add_argument("--no-cache", action="store_true",
                      help="do not keep or reuse compiled programs on disk (default: kept in "
                           "$NONDECOUPLING_CACHE_DIR, else $XDG_CACHE_HOME/nondecoupling/jax or "
                           "~/.cache/nondecoupling/jax)")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  _add_tabular(sub)
  _add_dynamics(sub)
  _add_figures(sub)
  _add_bridge(sub)
  return parser


def _add_tabular(sub) -> None:
  p = sub.add_parser(
      "verify", help="check every statement on random instances and search for counterexamples",
      description="Checks every statement (identities B1-B5, the paper's C1-C4, this project's "
                  "D1-D7) on thousands of random instances (families: dense, sparse, tied, gold, "
                  "reference, extreme_beta), searches for counterexamples with Hypothesis, prints "
                  "a table and writes report.json and report.md (and one instance file per "
                  "counterexample). Exit 0 exactly when every outcome is as expected.")
  p.add_argument("--instances", type=positive_int, default=6144,
                 help="random instances per statement (default 6144)")
  p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
  p.add_argument("--search-examples", type=non_negative_int, default=300,
                 help="Hypothesis examples per statement (default 300; 0 disables the search)")
  p.add_argument("--out", default="results", help="output directory (default results/)")
  p.add_argument("--only", default=None,
                 help="comma-separated statement names or prefixes (e.g. C3,D1) to check")
  _resource_limits(p)
  p.set_defaults(handler="verify:run_verify")

  p = sub.add_parser("check", help="every quantity and statement margin for one instance file",
                     description="Reads an instance file and prints every quantity (SFT losses, "
                                 "C₁, rewards, the RL value, bounds, β_c) and the margin of every "
                                 "statement (π₂ = d for RL-then-SFT). For a tree file: the "
                                 "token-level quantities (L, J, J_β, KL, C₁ on the leaf set, soft "
                                 "value, token-mean SFT excess, the G4 fixed points) and the "
                                 "G1-G4 margins." + TREE_FILE_NOTE)
  p.add_argument("file", help="instance or tree JSON file")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
  _tree_input(p)
  _input_limit(p)
  _resource_limits(p)
  p.set_defaults(handler="check:run_check")


def _add_dynamics(sub) -> None:
  p = sub.add_parser(
      "frontier",
      help="exact SFT-loss/reward Pareto frontier of an instance (this project's D4)",
      description="For each λ ≥ 0, the SFT loss and reward of π_λ = argmin L(π) − λ J(π) over "
                  "tabular policies (exact per-prompt solution, including mass moved to a "
                  "better response outside the data's support). This project's result D4, "
                  "not the paper's." + TREE_FILE_NOTE + " Every leaf distribution is an "
                  "autoregressive policy, so the frontier over leaf distributions is the "
                  "frontier over token-level policies.")
  p.add_argument("file", metavar="FILE", help="instance or tree JSON file")
  p.add_argument("--lambdas", default=DEFAULT_LAMBDAS,
                 help=f"comma-separated λ ≥ 0 (default {DEFAULT_LAMBDAS})")
  p.add_argument("--json", action="store_true", help='print {"points": [...]} as JSON')
  _tree_input(p)
  _input_limit(p)
  _resource_limits(p)
  p.set_defaults(handler="dynamics:run_frontier")

  p = sub.add_parser(
      "compare", help="run every pipeline and fusion recipe and compare their end points",
      description="Runs SFT-then-RL (exact and as flows), RL-then-SFT, alternating, joint and "
                  "the fusion recipes (grpo, dr_grpo, hpt, luffy, srft, relift) with documented "
                  "defaults (u = 1/min prompt weight: flows of 5u per phase, alternating every "
                  "u over 10u, joint λ=1 over 10u; recipes: --recipe-steps exact-field steps "
                  "with learning rate --recipe-lr × u; --recipe-option overrides a published "
                  "default) and prints SFT loss, reward, regularised reward and decoupling "
                  "regret (this project's D4)." + TREE_FILE_NOTE + " Tree rows: the SFT "
                  "optima (d, token-mean), SFT-then-RL exact, the k1/k2/k3 fixed points and "
                  "every tree recipe (--recipe-steps exact-field steps), each with its "
                  "expected length.")
  p.add_argument("file", help="instance or tree JSON file")
  p.add_argument("--json", action="store_true", help="print JSON on stdout")
  p.add_argument("--recipe-steps", type=positive_int, default=DEFAULT_RECIPE_STEPS,
                 help=f"outer steps per recipe (default {DEFAULT_RECIPE_STEPS})")
  p.add_argument("--recipe-lr", type=positive_float, default=DEFAULT_RECIPE_LR,
                 help=f"recipe learning rate in units of u (default {DEFAULT_RECIPE_LR})")
  p.add_argument("--recipe-option", action="append", default=[], metavar="NAME.FIELD=VALUE",
                 help="set one option of a recipe's config, repeatable (e.g. grpo.group_size=4, "
                      "luffy.shaping_gamma=none, grpo.kl_form=k3_loss_unclamped, "
                      "relift.buffer_order=oldest_first); values: a number, true/false, none or "
                      "a word; each option's rule is checked")
  _tree_input(p)
  _input_limit(p)
  _resource_limits(p)
  p.set_defaults(handler="dynamics:run_compare")

  p = sub.add_parser(
      "flow", help="print the trajectory of one pipeline's gradient flows",
      description="Integrates one pipeline (default schedule, see `compare --help`) with an "
                  "adaptive solver (explicit, or Rosenbrock where the flow is stiff) and prints "
                  "time, phase, L, J, J_β, KL to d and to ρ, gradient norms and cos∠(∇L, ∇J_β) "
                  "(null where a gradient is within rounding of 0)." + TREE_FILE_NOTE +
                  " For a tree, --construct or --recipe: --steps exact-field ascent steps "
                  "from ρ (learning rate --lr × u, u = 1/min prompt weight), printing L, J, "
                  "J_β, KL to ρ and d, regret and the expected length at --points points.")
  p.add_argument("file", help="instance or tree JSON file")
  p.add_argument("--pipeline", choices=PIPELINES, default=None,
                 help="pipeline name (atomic instances; required there)")
  p.add_argument("--construct", choices=TREE_CONSTRUCTS, default=None,
                 help="tree files: the KL construct to ascend (k1 in the reward, k2/k3 in the "
                      "loss)")
  p.add_argument("--recipe", default=None, help="tree files: a tree recipe to ascend")
  p.add_argument("--steps", type=positive_int, default=DEFAULT_TREE_STEPS,
                 help=f"tree files: ascent steps (default {DEFAULT_TREE_STEPS}; rounded up to "
                      "a multiple of --points)")
  p.add_argument("--lr", type=positive_float, default=DEFAULT_RECIPE_LR,
                 help=f"tree files: learning rate in units of u (default {DEFAULT_RECIPE_LR})")
  p.add_argument("--points", type=positive_int, default=8,
                 help="saved points per phase, or in all for a tree (default 8)")
  _tree_input(p)
  p.add_argument("--json", action="store_true", help="print JSON on stdout")
  _input_limit(p)
  _resource_limits(p)
  p.set_defaults(handler="dynamics:run_flow")


def _add_figures(sub) -> None:
  p = sub.add_parser("figures", help="write every figure as PNG and PDF",
                     description="Writes every figure (theorems, dynamics, recipes, bridge) as "
                                 "PNG and PDF into --out.")
  p.add_argument("--out", default="figures/out", help="output directory (default figures/out)")
  p.add_argument("--only", default=None, help="comma-separated figure names to write")
  p.set_defaults(handler="figures:run_figures")


def _model_args(p, required=True) -> None:
  if required:
    p.add_argument("--model", required=True,
                   help="Qwen3 model directory (config.json, model.safetensors, tokenizer.json)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype (default float32: weights upcast, the exact path)")
  p.add_argument("--batch-size", type=positive_int, default=16,
                 help="rows per forward pass, rounded up to a multiple of the device count "
                      "(default 16)")


def _experiment_args(p) -> None:
  p.add_argument("--beta", type=positive_float, default=0.1,
                 help="KL coefficient of the RL phases (default 0.1)")
  p.add_argument("--sft-epochs", type=positive_int, default=2, help="SFT epochs (default 2)")
  p.add_argument("--train-batch-size", type=positive_int, default=16,
                 help="SFT minibatch size (default 16)")
  p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                 help="sgd (normalised step lr / mean ||[phi, 1]||^2) or adam (default sgd)")
  p.add_argument("--lr", type=positive_float, default=None,
                 help="learning rate (default 0.5 for sgd, 1e-3 for adam)")
  p.add_argument("--rl-optimizer", choices=("lbfgs", "same"), default="lbfgs",
                 help="RL phases (full batch, exact): L-BFGS, or the SFT optimiser (default lbfgs)")
  p.add_argument("--rl-max-steps", type=positive_int, default=2000,
                 help="RL step limit (default 2000)")
  p.add_argument("--rl-tol", type=positive_float, default=1e-6,
                 help="RL converged when |dJ_beta| <= tol * max(1, |J_beta|) (default 1e-6)")
  p.add_argument("--seed", type=non_negative_int, default=0,
                 help="minibatch shuffling seed (default 0)")


def _add_bridge(sub) -> None:
  p = sub.add_parser(
      "bridge", help="real Qwen3 logits: score, extract an instance, the CoLA experiment, demo",
      description="The bridge from a Qwen3 checkpoint (pure JAX, no torch; CPU, GPU or TPU) to "
                  "the theory: score candidates, extract a CoLA instance with linear-head "
                  "features, run the paper's two pipelines with a shared-parameter head, or a "
                  "demo on a small random model.")
  bsub = p.add_subparsers(dest="bridge_command", metavar="SUBCOMMAND", parser_class=_Parser)
  bsub.required = True

  q = bsub.add_parser("score", help="log p(candidate | prompt) for each candidate",
                      description="Sums log p over the candidate's tokens (float32 log-softmax). "
                                  "Without --chat the prompt is tokenised as given, no special "
                                  "tokens added; with --chat it is a ChatML user turn plus the "
                                  "assistant header and an empty think block (thinking off).")
  _model_args(q)
  q.add_argument("--prompt", required=True, help="prompt text")
  q.add_argument("--candidate", action="append", required=True,
                 help="candidate text (repeat for several)")
  q.add_argument("--chat", action="store_true", help="render the prompt as a ChatML user turn")
  q.add_argument("--json", action="store_true", help='print {"candidates": [...], "logprobs": '
                 '[...]}')
  _resource_limits(q)
  q.set_defaults(handler="bridge:run_score")

  q = bsub.add_parser("extract", help="a CoLA TSV -> an instance file plus linear-head features",
                      description="One prompt per sentence (the template of "
                                  "verify/bridge/extract.py), responses = the two label words, "
                                  "reference = the model's probabilities renormalised over them, "
                                  "data = the gold label, reward = +1 gold / -1 otherwise. Writes "
                                  "FILE and FILE.features.npz beside it.")
  _model_args(q)
  q.add_argument("--data", required=True, help="CoLA TSV (2-column or original 4-column form)")
  q.add_argument("--beta", type=positive_float, required=True, help="KL coefficient beta > 0")
  q.add_argument("--out", required=True, help="instance JSON file to write")
  q.add_argument("--limit", type=positive_int, default=None, help="first N sentences only")
  q.add_argument("--chat", action="store_true", help="ChatML prompts (labels without the space)")
  q.add_argument("--json", action="store_true", help="print a JSON summary")
  _resource_limits(q)
  q.set_defaults(handler="bridge:run_extract")

  q = bsub.add_parser("experiment", help="the paper's two pipelines with a linear head (Fig. 3)",
                      description="SFT (2 epochs) then RL (exact expectation over the labels, KL "
                                  "to the SFT model), and RL to convergence then SFT (2 epochs), "
                                  "with pi_W(y|x) = softmax(W phi(x) + b), phi = the model's "
                                  "final hidden state, W from its LM head. Prints held-out SFT "
                                  "loss and mean@1 reward; --out writes JSON and the figures.")
  _model_args(q)
  q.add_argument("--train", required=True, help="training CoLA TSV")
  q.add_argument("--test", required=True, help="held-out CoLA TSV")
  q.add_argument("--limit-train", type=positive_int, default=None, help="first N training rows")
  q.add_argument("--limit-test", type=positive_int, default=None, help="first N held-out rows")
  q.add_argument("--chat", action="store_true", help="ChatML prompts")
  _experiment_args(q)
  q.add_argument("--out", default=None, help="directory for experiment.json and the figures")
  q.add_argument("--json", action="store_true", help="print the result as JSON")
  _resource_limits(q)
  q.set_defaults(handler="bridge:run_experiment")

  q = bsub.add_parser("extract-tree", help="a token tree (top-k per node) from a prompt -> tree file",
                      description="At each node the model's top-k next tokens plus one <other> "
                                  "token that ends the sequence (the remaining mass), "
                                  "renormalised, as the reference; the top-k children are "
                                  "expanded to depth D (one batched forward per level). SFT data "
                                  "= --demo (or the greedy path); reward = a named rule. Writes a "
                                  "tree file for `check` (G1-G4 on real logits).")
  _model_args(q)
  q.add_argument("--prompt", required=True, help="prompt text")
  q.add_argument("--top-k", type=positive_int, required=True, help="tokens kept per node (k)")
  q.add_argument("--depth", type=positive_int, required=True, help="maximum response length D")
  q.add_argument("--reward", required=True, choices=("exact_match", "final_answer",
                                                      "length_penalty"),
                 help="reward rule (exact_match needs --demo, final_answer --answer)")
  q.add_argument("--demo", default=None, help="demonstration text (SFT data; default greedy)")
  q.add_argument("--answer", default=None, help="final_answer: the answer (one token)")
  q.add_argument("--correct", type=float, default=1.0, help="reward when right (default 1)")
  q.add_argument("--incorrect", type=float, default=0.0, help="reward when wrong (default 0)")
  q.add_argument("--base", type=float, default=0.0, help="length_penalty: base (default 0)")
  q.add_argument("--per-token", type=float, default=0.1,
                 help="length_penalty: per-token cost (default 0.1)")
  q.add_argument("--beta", type=positive_float, default=1.0, help="KL coefficient (default 1)")
  q.add_argument("--chat", action="store_true", help="render the prompt as a ChatML user turn")
  q.add_argument("--allow-large", action="store_true",
                 help="allow over 64 distinct tokens or depth over 12")
  q.add_argument("--out", default=None, help="tree JSON file to write (default: stdout)")
  _resource_limits(q)
  q.set_defaults(handler="bridge:run_extract_tree")

  q = bsub.add_parser("demo", help="score, extract and experiment on a small random Qwen3",
                      description="Builds a small random Qwen3 deterministically (no network, no "
                                  "torch) and runs score, extract and experiment on the built-in "
                                  "CoLA-style examples. Random weights are not a language model.")
  q.add_argument("--out", default=None,
                 help="directory to keep the model, instance, features, JSON and figures")
  q.add_argument("--rl-max-steps", type=positive_int, default=300,
                 help="RL step limit (default 300)")
  q.add_argument("--json", action="store_true", help="print the results as JSON")
  _resource_limits(q)
  q.set_defaults(handler="bridge:run_demo_command")

"""`nondecoupling bridge score | extract | experiment | demo`: real Qwen3 logits, no torch.

Bad input (missing files, an unsupported config, tensors that do not match it, malformed TSV rows)
prints one line ``error: ...`` and exits 2 with nothing written.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from scipy.special import softmax

from ...figures import write_figure
from ...figures.bridge import RESULT_FIGURES
from .. import budget
from ..bridge.checkpoint import load_model
from ..bridge.cola import read_cola
from ..bridge.demo import DEMO_NOTICE, run_demo
from ..bridge.experiment import ExperimentSettings, run_model_experiment
from ..bridge.extract import extract_file
from ..bridge.scoring import score_candidates
from ..bridge.tree_extract import extract_tree
from ..provenance import provenance
from ..reports import (
  StagedOutput,
  atomic_write_json,
  check_output_dir,
  check_output_file,
  scratch_dir,
)
from .bridge_limits import cola_prompts, require_bridge
from .console import console, escape, print_json
from .limits import limits

__all__ = ["run_score", "run_extract", "run_extract_tree", "run_experiment", "run_demo_command",
           "write_experiment"]


class _Progress:
  """A rich progress bar on stderr (silent when stderr is not a terminal)."""

  def __init__(self, description: str, total: int):
    self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=console(stderr=True), transient=True)
    self.total = total
    self.task = self.p.add_task(description, total=total)

  def __enter__(self):
    self.p.__enter__()
    return self

  def __exit__(self, *exc):
    return self.p.__exit__(*exc)

  def advance(self, n: int = 1) -> None:
    self.p.advance(self.task, n)


def run_score(args) -> int:
  require_bridge(args, args.model, [args.prompt], args.candidate, args.chat,
                 jax.local_device_count())
  obj = score_candidates(args.model, args.prompt, args.candidate, args.chat, args.dtype,
                         args.batch_size)
  if args.json:
    print_json({**obj, "provenance": provenance()})
    return 0
  _print_scores(obj, args.chat)
  return 0


def _print_scores(obj, chat) -> None:
  lp = np.array(obj["logprobs"])
  t = Table(title="log p(candidate | prompt)" + (" (ChatML, thinking off)" if chat else ""))
  t.add_column("candidate")
  t.add_column("log p", justify="right")
  t.add_column("p renormalised over candidates", justify="right")
  for c, v, r in zip(obj["candidates"], lp, softmax(lp)):
    t.add_row(escape(repr(c)), f"{v:.6f}", f"{r:.4f}")
  console().print(t)


def run_extract(args) -> int:
  check_output_file(args.out)
  examples = read_cola(args.data, args.limit)
  require_bridge(args, args.model, *cola_prompts(examples, args.chat), chat=False,
                 devices=jax.local_device_count())
  with _Progress("scoring", len(examples)) as bar:
    obj = extract_file(args.model, args.data, args.beta, args.out, args.limit, args.chat,
                       args.dtype, args.batch_size, examples=examples, on_batch=bar.advance)
  if args.json:
    print_json({**obj, "provenance": provenance()}, indent=2)
    return 0
  _print_extract(obj)
  return 0


def _print_extract(obj) -> None:
  t = Table(title=f"extracted {obj['sentences']} sentences ({obj['acceptable']} acceptable), "
                  f"beta = {obj['beta']:g}")
  t.add_column("quantity")
  t.add_column("value", justify="right")
  t.add_row("labels (column = CoLA label)", escape(", ".join(repr(s) for s in obj["labels"])))
  t.add_row("model accuracy (argmax over the labels)", f"{obj['model_accuracy']:.4f}")
  t.add_row("model mean@1 reward (exact, ±1)", f"{obj['model_mean_reward']:.4f}")
  t.add_row("C₁(β) of Theorem 3.1 (ρ = d)", f"{obj['c1_sft_then_rl']:.3g}")
  t.add_row("C₁(β; ρ = model) (D1 threshold quantity)", f"{obj['c1_model_reference']:.6g}")
  t.add_row("instance file", escape(obj["instance"]))
  t.add_row("features (hidden, label_rows, ...)", escape(obj["features"]))
  console().print(t)
  console().print("C₁ = 0: the reward is +1 on every gold label, so Theorem 3.1 predicts no "
                  "SFT-loss rise from exact RL after exact SFT.")


def run_extract_tree(args) -> int:
  """`bridge extract-tree`: the top-k token tree of a prompt as a tree file (or on stdout)."""
  if args.out is not None:
    check_output_file(args.out)
  require_bridge(args, args.model, [args.prompt], ["x"], args.chat, jax.local_device_count())
  weights, tok = load_model(args.model, args.dtype)
  obj = extract_tree(weights, tok, args.prompt, args.top_k, args.depth, args.reward,
                     beta=args.beta, demo=args.demo, answer=args.answer, correct=args.correct,
                     incorrect=args.incorrect, base=args.base, per_token=args.per_token,
                     chat=args.chat, allow_large=args.allow_large,
                     batch_size=max(args.batch_size, 1))
  if args.out is None:
    print_json(obj)
  else:
    atomic_write_json(args.out, obj)
  return 0


def _settings(args):
  return ExperimentSettings(beta=args.beta, sft_epochs=args.sft_epochs,
                            batch_size=args.train_batch_size, optimizer=args.optimizer, lr=args.lr,
                            rl_max_steps=args.rl_max_steps, rl_tol=args.rl_tol, seed=args.seed,
                            rl_optimizer=args.rl_optimizer)


def write_experiment(staged: StagedOutput, result: dict) -> None:
  """Stages experiment.json and the two figures of the experiment (moved into place on commit)."""
  staged.write_json("experiment.json", result)
  for name, draw in RESULT_FIGURES.items():
    write_figure(draw(result), staged.path("."), name)


def run_experiment(args) -> int:
  out = Path(args.out) if args.out else None
  if out is not None:
    check_output_dir(out)
  train = read_cola(args.train, args.limit_train)
  test = read_cola(args.test, args.limit_test)
  prompts, labels = cola_prompts(train + test, args.chat)
  require_bridge(args, args.model, prompts, labels, chat=False, devices=jax.local_device_count(),
                 experiment=True)
  weights, tok = load_model(args.model, args.dtype)
  with _Progress("features", len(train) + len(test)) as bar:
    result = run_model_experiment(weights, tok, train, test, _settings(args), args.chat,
                                  args.batch_size, on_batch=bar.advance)
  result["provenance"] = provenance()
  written = []
  if out is not None:
    with StagedOutput(out) as staged:
      write_experiment(staged, result)
      written = staged.commit()
  if args.json:
    print_json(result)
    return 0
  print_experiment(result)
  for p in written:
    print(f"wrote {p}")
  return 0


def print_experiment(result: dict) -> None:
  con = console()
  s = result["settings"]
  sizes = result["sizes"]
  titles = {"sft_then_rl": "SFT-then-RL (paper Fig. 3a: held-out SFT loss)",
            "rl_then_sft": "RL-then-SFT (paper Fig. 3b: held-out mean@1 reward)"}
  names = {"test_sft_loss": "held-out SFT loss", "test_reward": "held-out mean@1 (±1)",
           "test_accuracy": "held-out greedy accuracy", "train_sft_loss": "train SFT loss",
           "train_reward": "train mean@1 (±1)", "train_accuracy": "train greedy accuracy"}
  for pname, pipe in result["pipelines"].items():
    phases = ("SFT", "RL") if pname == "sft_then_rl" else ("RL", "SFT")
    t = Table(title=f"{titles[pname]}: train {sizes['train']}, held-out {sizes['test']}, "
                    f"beta {s['beta']:g}, RL {pipe['rl_steps']} steps "
                    f"({'converged' if pipe['rl_converged'] else 'step limit'})")
    for col in ("metric", "base", f"after {phases[0]}", f"end of {phases[1]}",
                f"min in {phases[1]}", f"max in {phases[1]}"):
      t.add_column(col, justify="left" if col == "metric" else "right")
    for k, v in pipe["summary"].items():
      t.add_row(names[k], *(f"{v[c]:.4f}" for c in ("base", "after_phase1", "final",
                                                     "phase2_min", "phase2_max")))
    con.print(t)
  if "base_full_label" in result:
    b = result["base_full_label"]
    con.print(f"base model on full label sequences: held-out SFT loss "
                  f"{b['test_sft_loss']:.4f}, mean@1 {b['test_reward']:.4f}, accuracy "
                  f"{b['test_accuracy']:.4f}")
  con.print(f"Theorem 3.1: C₁(β) = {result['c1_theorem_3_1']:.3g} on the training instance (reward +1 on every gold label), so "
                "exact tabular RL after exact SFT would not raise the SFT loss; any rise above "
                "comes from the shared head, finite SFT and held-out evaluation.")


def run_demo_command(args) -> int:
  out = Path(args.out) if args.out else None
  if out is not None:
    check_output_dir(out)
  budget.require(budget.bridge_cost("bridge demo (the built-in random model)", params=0,
                                    weight_bytes=4, devices=1, flops=0.0, rows=0,
                                    batch_tokens=0, hidden=0, intermediate=0, experiment=True),
                 limits(args))
  console(stderr=args.json).print(escape(DEMO_NOTICE))
  written = []
  if out is None:
    with scratch_dir("nondecoupling-demo-") as tmp:
      result = run_demo(tmp, rl_max_steps=args.rl_max_steps)
  else:
    # Everything (model, instance, features, experiment, figures) is made in a staging folder
    # and moved into place at the end: an interrupted demo leaves --out as it was.
    with StagedOutput(out, replace=("model",)) as staged:
      result = run_demo(staged.path("."), rl_max_steps=args.rl_max_steps)
      write_experiment(staged, {**result["experiment"], "provenance": provenance()})
      written = staged.commit()
    for key in ("instance", "features"):
      result["extract"][key] = str(out / Path(result["extract"][key]).name)
  result["provenance"] = provenance()
  if args.json:
    print_json(result)
    return 0
  print(f"model: random Qwen3 (hidden {result['model']['hidden_size']}, "
        f"{result['model']['num_layers']} layers, vocab {result['model']['vocab_size']})")
  _print_scores(result["score"], False)
  _print_extract(result["extract"])
  print_experiment(result["experiment"])
  for p in written:
    print(f"wrote {p}")
  print(DEMO_NOTICE)
  return 0

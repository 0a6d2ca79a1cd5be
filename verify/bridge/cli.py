"""`nondecoupling bridge score | extract | experiment | demo`: real Qwen3 logits, no torch.

Bad input (missing files, an unsupported config, tensors that do not match it, malformed TSV rows)
prints one line ``error: ...`` and exits 2 with nothing written.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from verify.args import positive_float as _positive_float
from verify.args import positive_int as _positive_int
from verify.io import InputError

__all__ = ["add_commands", "cmd_score", "cmd_extract", "cmd_experiment", "cmd_demo"]


def _model_args(p, required=True) -> None:
  if required:
    p.add_argument("--model", required=True,
                   help="Qwen3 model directory (config.json, model.safetensors, tokenizer.json)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype (default float32: weights upcast, the exact path)")
  p.add_argument("--batch-size", type=_positive_int, default=16,
                 help="rows per forward pass, rounded up to a multiple of the device count "
                      "(default 16)")


def _experiment_args(p) -> None:
  p.add_argument("--beta", type=_positive_float, default=0.1,
                 help="KL coefficient of the RL phases (default 0.1)")
  p.add_argument("--sft-epochs", type=_positive_int, default=2, help="SFT epochs (default 2)")
  p.add_argument("--train-batch-size", type=_positive_int, default=16,
                 help="SFT minibatch size (default 16)")
  p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                 help="sgd (normalised step lr / mean ||[phi, 1]||^2) or adam (default sgd)")
  p.add_argument("--lr", type=_positive_float, default=None,
                 help="learning rate (default 0.5 for sgd, 1e-3 for adam)")
  p.add_argument("--rl-optimizer", choices=("lbfgs", "same"), default="lbfgs",
                 help="RL phases (full batch, exact): L-BFGS, or the SFT optimiser (default lbfgs)")
  p.add_argument("--rl-max-steps", type=_positive_int, default=2000,
                 help="RL step limit (default 2000)")
  p.add_argument("--rl-tol", type=_positive_float, default=1e-6,
                 help="RL converged when |dJ_beta| <= tol * max(1, |J_beta|) (default 1e-6)")
  p.add_argument("--seed", type=int, default=0, help="minibatch shuffling seed (default 0)")


def add_commands(sub) -> None:
  p = sub.add_parser(
      "bridge", help="real Qwen3 logits: score, extract an instance, the CoLA experiment, demo",
      description="The bridge from a Qwen3 checkpoint (pure JAX, no torch; CPU, GPU or TPU) to "
                  "the theory: score candidates, extract a CoLA instance with linear-head "
                  "features, run the paper's two pipelines with a shared-parameter head, or a "
                  "demo on a small random model.")
  bsub = p.add_subparsers(dest="bridge_command", metavar="SUBCOMMAND")
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
  q.set_defaults(func=cmd_score)

  q = bsub.add_parser("extract", help="a CoLA TSV -> an instance file plus linear-head features",
                      description="One prompt per sentence (verify/bridge/extract.py TEMPLATE), "
                                  "responses = the two label words, reference = the model's "
                                  "probabilities renormalised over them, data = the gold label, "
                                  "reward = +1 gold / -1 otherwise. Writes FILE and "
                                  "FILE.features.npz beside it.")
  _model_args(q)
  q.add_argument("--data", required=True, help="CoLA TSV (2-column or original 4-column form)")
  q.add_argument("--beta", type=_positive_float, required=True, help="KL coefficient beta > 0")
  q.add_argument("--out", required=True, help="instance JSON file to write")
  q.add_argument("--limit", type=_positive_int, default=None, help="first N sentences only")
  q.add_argument("--chat", action="store_true", help="ChatML prompts (labels without the space)")
  q.add_argument("--json", action="store_true", help="print a JSON summary")
  q.set_defaults(func=cmd_extract)

  q = bsub.add_parser("experiment", help="the paper's two pipelines with a linear head (Fig. 3)",
                      description="SFT (2 epochs) then RL (exact expectation over the labels, KL "
                                  "to the SFT model), and RL to convergence then SFT (2 epochs), "
                                  "with pi_W(y|x) = softmax(W phi(x) + b), phi = the model's "
                                  "final hidden state, W from its LM head. Prints held-out SFT "
                                  "loss and mean@1 reward; --out writes JSON and the figures.")
  _model_args(q)
  q.add_argument("--train", required=True, help="training CoLA TSV")
  q.add_argument("--test", required=True, help="held-out CoLA TSV")
  q.add_argument("--limit-train", type=_positive_int, default=None, help="first N training rows")
  q.add_argument("--limit-test", type=_positive_int, default=None, help="first N held-out rows")
  q.add_argument("--chat", action="store_true", help="ChatML prompts")
  _experiment_args(q)
  q.add_argument("--out", default=None, help="directory for experiment.json and the figures")
  q.add_argument("--json", action="store_true", help="print the result as JSON")
  q.set_defaults(func=cmd_experiment)

  q = bsub.add_parser("demo", help="score, extract and experiment on a small random Qwen3",
                      description="Builds a small random Qwen3 deterministically (no network, no "
                                  "torch) and runs score, extract and experiment on the built-in "
                                  "CoLA-style examples. Random weights are not a language model.")
  q.add_argument("--out", default=None,
                 help="directory to keep the model, instance, features, JSON and figures")
  q.add_argument("--rl-max-steps", type=_positive_int, default=300,
                 help="RL step limit (default 300)")
  q.add_argument("--json", action="store_true", help="print the results as JSON")
  q.set_defaults(func=cmd_demo)


# --- helpers ---------------------------------------------------------------------------------


def _err_console():
  from rich.console import Console
  return Console(stderr=True)


def _load(model_dir: str, dtype: str):
  from verify.bridge.checkpoint import load_weights
  from verify.bridge.config import read_config
  from verify.bridge.tokenizer import load_tokenizer
  read_config(model_dir)  # the directory and config.json first: the cheapest errors
  tok = load_tokenizer(model_dir)
  weights = load_weights(model_dir, dtype)
  return weights, tok


def _check_tokenizer_fits(weights, tok, model_dir) -> None:
  n = tok.get_vocab_size(with_added_tokens=True)
  if n > weights.config.vocab_size:
    raise InputError(f"{model_dir}: tokenizer has {n} tokens but the model only "
                     f"{weights.config.vocab_size} embedding rows")


class _Progress:
  """A rich progress bar on stderr (silent when stderr is not a terminal)."""

  def __init__(self, description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=_err_console(), transient=True)
    self.total = total
    self.task = self.p.add_task(description, total=total)

  def __enter__(self):
    self.p.__enter__()
    return self

  def __exit__(self, *exc):
    return self.p.__exit__(*exc)

  def advance(self, n: int = 1) -> None:
    self.p.advance(self.task, n)


def _out_path_ok(path: Path, kind: str) -> None:
  if path.exists() and path.is_dir() and kind == "file":
    raise InputError(f"--out {path}: is a directory, expected a file path")
  if path.exists() and not path.is_dir() and kind == "dir":
    raise InputError(f"--out {path}: exists and is not a directory")


# --- score -----------------------------------------------------------------------------------


def score(model_dir, prompt, candidates, chat=False, dtype="float32", batch_size=16) -> dict:
  from verify.bridge.scoring import score_texts
  weights, tok = _load(model_dir, dtype)
  _check_tokenizer_fits(weights, tok, model_dir)
  try:
    res = score_texts(weights, tok, [prompt], candidates, chat=chat, batch_size=batch_size)
  except ValueError as e:
    raise InputError(str(e)) from None
  return {"candidates": list(candidates), "logprobs": [float(v) for v in res.logprobs[0]]}


def cmd_score(args) -> int:
  obj = score(args.model, args.prompt, args.candidate, args.chat, args.dtype, args.batch_size)
  if args.json:
    sys.stdout.write(json.dumps(obj) + "\n")
    return 0
  _print_scores(obj, args.chat)
  return 0


def _print_scores(obj, chat) -> None:
  import numpy as np
  from rich.console import Console
  from rich.table import Table
  from scipy.special import softmax
  lp = np.array(obj["logprobs"])
  t = Table(title="log p(candidate | prompt)" + (" (ChatML, thinking off)" if chat else ""))
  t.add_column("candidate")
  t.add_column("log p", justify="right")
  t.add_column("p renormalised over candidates", justify="right")
  for c, v, r in zip(obj["candidates"], lp, softmax(lp)):
    t.add_row(repr(c), f"{v:.6f}", f"{r:.4f}")
  Console().print(t)


# --- extract ---------------------------------------------------------------------------------


def extract_to_file(model_dir, data, beta, out, limit=None, chat=False, dtype="float32",
                    batch_size=16, examples=None) -> dict:
  import dataclasses

  import numpy as np

  from theory.objectives import c1
  from verify.bridge.cola import read_cola
  from verify.bridge.extract import TEMPLATE, extract, write_extraction
  out = Path(out)
  _out_path_ok(out, "file")
  if examples is None:
    examples = read_cola(data, limit)
  weights, tok = _load(model_dir, dtype)
  _check_tokenizer_fits(weights, tok, model_dir)
  with _Progress("scoring", len(examples)) as bar:
    ex = extract(weights, tok, examples, beta, chat=chat, batch_size=batch_size,
                 on_batch=bar.advance)
  fpath = write_extraction(out, ex)
  inst = ex.instance
  sr = dataclasses.replace(inst, reference=inst.data)
  ref = np.asarray(inst.reference)
  return {
      "instance": str(out), "features": str(fpath), "sentences": len(examples),
      "acceptable": int(ex.gold.sum()), "labels": ex.labels, "label_token_ids": ex.label_ids,
      "template": TEMPLATE, "chat": chat, "beta": beta,
      "model_accuracy": float(np.mean(np.argmax(ref, axis=1) == ex.gold)),
      "model_mean_reward": float(np.mean(2 * ref[np.arange(len(ex.gold)), ex.gold] - 1)),
      "c1_sft_then_rl": float(c1(sr)),
      "c1_model_reference": float(c1(inst)),
      "hidden_size": int(ex.hidden.shape[1]),
  }


def cmd_extract(args) -> int:
  obj = extract_to_file(args.model, args.data, args.beta, args.out, args.limit, args.chat,
                        args.dtype, args.batch_size)
  if args.json:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    return 0
  _print_extract(obj)
  return 0


def _print_extract(obj) -> None:
  from rich.console import Console
  from rich.table import Table
  t = Table(title=f"extracted {obj['sentences']} sentences ({obj['acceptable']} acceptable), "
                  f"beta = {obj['beta']:g}")
  t.add_column("quantity")
  t.add_column("value", justify="right")
  t.add_row("labels (column = CoLA label)", ", ".join(repr(s) for s in obj["labels"]))
  t.add_row("model accuracy (argmax over the labels)", f"{obj['model_accuracy']:.4f}")
  t.add_row("model mean@1 reward (exact, ±1)", f"{obj['model_mean_reward']:.4f}")
  t.add_row("C₁(β) of Theorem 3.1 (ρ = d)", f"{obj['c1_sft_then_rl']:.3g}")
  t.add_row("C₁(β; ρ = model) (D1 threshold quantity)", f"{obj['c1_model_reference']:.6g}")
  t.add_row("instance file", obj["instance"])
  t.add_row("features (hidden, label_rows, ...)", obj["features"])
  Console().print(t)
  Console().print("C₁ = 0: the reward is +1 on every gold label, so Theorem 3.1 predicts no "
                  "SFT-loss rise from exact RL after exact SFT.")


# --- experiment ------------------------------------------------------------------------------


def run_model_experiment(weights, tok, train_examples, test_examples, settings, chat=False,
                         batch_size=16) -> dict:
  import numpy as np

  from verify.bridge.experiment import Features, run_experiment
  from verify.bridge.extract import extract
  total = len(train_examples) + len(test_examples)
  with _Progress("features", total) as bar:
    tr = extract(weights, tok, train_examples, settings.beta, chat=chat, batch_size=batch_size,
                 on_batch=bar.advance)
    te = extract(weights, tok, test_examples, settings.beta, chat=chat, batch_size=batch_size,
                 on_batch=bar.advance)
  with _Progress("training", 1) as bar:
    result = run_experiment(Features(tr.hidden, tr.gold), Features(te.hidden, te.gold),
                            tr.label_rows, settings,
                            reference_test=np.asarray(te.instance.reference))
    bar.advance()
  result["labels"] = tr.labels
  result["chat"] = chat
  return result


def _settings(args):
  from verify.bridge.experiment import ExperimentSettings
  return ExperimentSettings(beta=args.beta, sft_epochs=args.sft_epochs,
                            batch_size=args.train_batch_size, optimizer=args.optimizer, lr=args.lr,
                            rl_max_steps=args.rl_max_steps, rl_tol=args.rl_tol, seed=args.seed,
                            rl_optimizer=args.rl_optimizer)


def write_experiment(out_dir: Path, result: dict) -> list[Path]:
  import matplotlib.pyplot as plt

  from figures.bridge import fig3a_sft_then_rl, fig3b_rl_then_sft
  from verify.io import atomic_write_json
  out_dir.mkdir(parents=True, exist_ok=True)
  written = [out_dir / "experiment.json"]
  atomic_write_json(written[0], result)
  for name, fn in (("fig3a_sft_then_rl", fig3a_sft_then_rl),
                   ("fig3b_rl_then_sft", fig3b_rl_then_sft)):
    fig = fn(result)
    for ext in ("png", "pdf"):
      p = out_dir / f"{name}.{ext}"
      tmp = out_dir / f".{name}.{ext}.tmp"
      fig.savefig(tmp, format=ext, dpi=150 if ext == "png" else None, bbox_inches="tight")
      tmp.replace(p)
      written.append(p)
    plt.close(fig)
  return written


def cmd_experiment(args) -> int:
  from verify.bridge.cola import read_cola
  from verify.io import to_jsonable
  out = Path(args.out) if args.out else None
  if out is not None:
    _out_path_ok(out, "dir")
  train = read_cola(args.train, args.limit_train)
  test = read_cola(args.test, args.limit_test)
  weights, tok = _load(args.model, args.dtype)
  _check_tokenizer_fits(weights, tok, args.model)
  result = run_model_experiment(weights, tok, train, test, _settings(args), args.chat,
                                args.batch_size)
  written = write_experiment(out, result) if out is not None else []
  if args.json:
    sys.stdout.write(json.dumps(to_jsonable(result)) + "\n")
    return 0
  print_experiment(result)
  for p in written:
    print(f"wrote {p}")
  return 0


def print_experiment(result: dict) -> None:
  from rich.console import Console
  from rich.table import Table
  console = Console()
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
    console.print(t)
  if "base_full_label" in result:
    b = result["base_full_label"]
    console.print(f"base model on full label sequences: held-out SFT loss "
                  f"{b['test_sft_loss']:.4f}, mean@1 {b['test_reward']:.4f}, accuracy "
                  f"{b['test_accuracy']:.4f}")
  console.print("Theorem 3.1: C₁(β) = 0 on these instances (reward +1 on every gold label), so "
                "exact tabular RL after exact SFT would not raise the SFT loss; any rise above "
                "comes from the shared head, finite SFT and held-out evaluation.")


# --- demo ------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
  from verify.bridge.demo import DEMO_NOTICE, run_demo
  from verify.io import to_jsonable
  out = Path(args.out) if args.out else None
  if out is not None:
    _out_path_ok(out, "dir")
  print(DEMO_NOTICE, file=sys.stderr if args.json else sys.stdout)
  with tempfile.TemporaryDirectory(prefix="nondecoupling-demo-") as tmp:
    work = out if out is not None else Path(tmp)
    result = run_demo(work, rl_max_steps=args.rl_max_steps)
    written = write_experiment(work, result["experiment"]) if out is not None else []
  if args.json:
    sys.stdout.write(json.dumps(to_jsonable(result)) + "\n")
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

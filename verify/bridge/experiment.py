r"""The paper's CoLA experiment (§5, Fig. 3) with a shared-parameter linear-head policy.

Policy (THEORY.md E): π_W(y|x) = softmax(W φ(x) + b)_y over the two labels, φ(x) the model's final
hidden state at the answer position, W [2, H] initialised from the LM-head rows of the labels'
first tokens, b = 0. At initialisation π_W is the model's own next-token distribution renormalised
over the two first tokens (the "base model"). All prompts share (W, b): this is what the tabular
theory does not have.

Objectives, per split (uniform weights over its sentences, ±1 reward r = +1 on the gold label):
- SFT loss L(W) = mean_x −log π_W(gold_x | x);
- mean@1 reward J(W) = mean_x Σ_y π_W(y|x) r(x,y) = 2·P(gold) − 1 (exact expectation; the greedy
  accuracy mean_x [argmax π_W(·|x) = gold_x] is reported beside it);
- RL objective J_β(W) = J(W) − β mean_x KL(π_W(·|x) ‖ π_ref(·|x)) on the training sentences.

Pipelines (paper §5.1 and §5.2):
- SFT-then-RL: SFT for ``sft_epochs`` epochs (shuffled minibatches), then RL with the SFT model as
  reference (π_ref = π_W at the end of SFT, frozen), full-batch exact expectation over the labels,
  run to convergence;
- RL-then-SFT: RL with the base model as reference, to convergence, then SFT for ``sft_epochs``.

Optimiser (optax): "sgd" (default) with a normalised step lr / mean_x ‖[φ(x), 1]‖² (so that one step
moves a logit by about lr × its gradient whatever the feature scale; default lr 0.5), or "adam"
with lr as given (default 1e-3), for the SFT minibatches. The RL phases are full-batch and exact
(a smooth deterministic objective), so by default they use L-BFGS with a zoom line search
(``rl_optimizer="lbfgs"``; ``"same"`` uses the SFT optimiser instead). RL convergence:
|J_β(t) − J_β(t−1)| ≤ rl_tol · max(1, |J_β(t)|) (default 1e-6) or ``rl_max_steps`` steps (default
2000), whichever comes first.

The policy and the objectives are those of :mod:`nondecoupling.theory.parametric` (a
:class:`~nondecoupling.theory.parametric.LinearHead` over an instance whose data is one-hot on the
gold labels and whose reward is ±1), so C₁ of Theorem 3.1 is computed on the training instance,
not assumed.

Every step records held-out SFT loss, held-out mean@1, held-out greedy accuracy and the same on
the training sentences. Theorem 3.1's constant C₁(β) on the training instance is 0 (r is constant on
the gold labels), so exact tabular RL from the SFT optimum cannot raise the SFT loss; whatever the
held-out curves do here comes from the shared parameters, finite SFT and held-out evaluation.

References: arXiv 2601.07389 §5, Fig. 3; THEORY.md C1, E.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...theory import objectives as obj, parametric as pm
from ...theory.instance import Instance, make_instance, rl_stage_after_sft, with_reference
from ...theory.optimizers import make_optimizer
from .cola import Example
from .extract import extract

__all__ = [
    "ExperimentSettings", "Features", "gold_instance", "greedy_accuracy", "run_experiment",
    "run_model_experiment", "summarize", "PIPELINES",
]

PIPELINES = ("sft_then_rl", "rl_then_sft")
METRICS = ("test_sft_loss", "test_reward", "test_accuracy", "train_sft_loss", "train_reward",
           "train_accuracy")


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
  """Hyper-parameters (documented defaults; see module docstring)."""

  beta: float = 0.1
  sft_epochs: int = 2
  batch_size: int = 16
  optimizer: str = "sgd"
  lr: float | None = None  # None: 0.5 for normalised sgd, 1e-3 for adam
  rl_max_steps: int = 2000
  rl_tol: float = 1e-6
  seed: int = 0
  rl_optimizer: str = "lbfgs"  # "lbfgs" or "same" (the SFT optimiser)

  def learning_rate(self) -> float:
    if self.lr is not None:
      return float(self.lr)
    return 0.5 if self.optimizer == "sgd" else 1e-3


@dataclasses.dataclass(frozen=True)
class Features:
  """One split: features [N, H], gold labels [N] (0/1)."""

  hidden: np.ndarray
  gold: np.ndarray


def gold_instance(gold, beta: float, dtype) -> Instance:
  """The instance of one split: data one-hot on the gold labels, reward ±1, uniform weights.

  The reference is uniform until a phase sets it (RL: the policy the phase starts from).
  """
  gold = np.asarray(gold)
  n = gold.shape[0]
  data = np.eye(2)[gold]
  return make_instance(np.full(n, 1.0 / n), data, 2.0 * data - 1.0, beta,
                       reference=np.full((n, 2), 0.5), dtype=dtype)


def greedy_accuracy(head: pm.LinearHead, phi: jax.Array, inst: Instance) -> jax.Array:
  """mean_x [argmax_y π_W(y|x) = gold_x] (ties go to label 0)."""
  pred = jnp.argmax(pm.log_policy(head, phi, inst), axis=-1)
  return jnp.mean((pred == jnp.argmax(inst.data, axis=-1)).astype(phi.dtype))


def _metrics(head, train: tuple, test: tuple) -> dict:
  (p_tr, i_tr), (p_te, i_te) = train, test
  return {
      "test_sft_loss": pm.sft_loss(head, p_te, i_te),
      "test_reward": pm.reward(head, p_te, i_te),
      "test_accuracy": greedy_accuracy(head, p_te, i_te),
      "train_sft_loss": pm.sft_loss(head, p_tr, i_tr),
      "train_reward": pm.reward(head, p_tr, i_tr),
      "train_accuracy": greedy_accuracy(head, p_tr, i_tr),
  }


def _rows(inst: Instance, idx: jax.Array, weight: jax.Array) -> Instance:
  """The instance on the prompts ``idx`` (a minibatch) with prompt weights ``weight``."""
  return dataclasses.replace(inst, prompt_weights=weight, data=inst.data[idx],
                             reference=inst.reference[idx], reward=inst.reward[idx],
                             response_mask=inst.response_mask[idx])


def _optimizer(settings: ExperimentSettings, phi: np.ndarray):
  lr = settings.learning_rate()
  if settings.optimizer == "sgd":
    # Normalised step: one step moves a logit by about lr × its gradient whatever the scale.
    lr = lr / float(np.mean(np.sum(np.square(phi.astype(np.float64)), axis=1) + 1.0))
  return make_optimizer(settings.optimizer, lr)


class _Trainer:
  """Jitted SFT and RL steps on fixed shapes (one compile each)."""

  def __init__(self, settings, train: Features, test: Features, dtype):
    self.settings = settings
    self.dtype = dtype
    inst_tr = gold_instance(train.gold, settings.beta, dtype)
    inst_te = gold_instance(test.gold, settings.beta, dtype)
    self.train = (jnp.asarray(train.hidden, dtype), inst_tr)
    self.test = (jnp.asarray(test.hidden, dtype), inst_te)
    self.opt = _optimizer(settings, train.hidden)
    train_, test_, opt = self.train, self.test, self.opt

    @jax.jit
    def sft_step(head, state, idx, weight):
      grad = jax.grad(pm.sft_loss)(head, train_[0][idx], _rows(train_[1], idx, weight))
      upd, state = opt.update(grad, state, head)
      head = optax.apply_updates(head, upd)
      return head, state, _metrics(head, train_, test_)

    if settings.rl_optimizer == "lbfgs":
      self.rl_opt = rl_opt = optax.lbfgs()
    elif settings.rl_optimizer == "same":
      self.rl_opt = rl_opt = opt
    else:
      raise ValueError(f"rl_optimizer is {settings.rl_optimizer!r}, expected 'lbfgs' or 'same'")

    @jax.jit
    def rl_step(head, state, reference):
      rl_inst = with_reference(train_[1], reference)
      loss = lambda h: -pm.regularized_reward(h, train_[0], rl_inst)
      neg, grad = jax.value_and_grad(loss)(head)
      if settings.rl_optimizer == "lbfgs":
        upd, state = rl_opt.update(grad, state, head, value=neg, grad=grad, value_fn=loss)
      else:
        upd, state = rl_opt.update(grad, state, head)
      head = optax.apply_updates(head, upd)
      m = _metrics(head, train_, test_)
      m["rl_objective"] = pm.regularized_reward(head, train_[0], rl_inst)
      return head, state, m

    self.sft_step, self.rl_step = sft_step, rl_step
    self.metrics = jax.jit(lambda head: _metrics(head, train_, test_))
    self.policy = jax.jit(lambda head: jnp.exp(pm.log_policy(head, train_[0], train_[1])))

  def sft(self, head, rng, record):
    n = self.train[0].shape[0]
    bs = min(self.settings.batch_size, n)
    state = self.opt.init(head)
    for _ in range(self.settings.sft_epochs):
      perm = rng.permutation(n)
      for lo in range(0, n, bs):
        rows = perm[lo: lo + bs]
        idx = np.zeros(bs, np.int32)
        idx[: len(rows)] = rows
        weight = np.zeros(bs)
        weight[: len(rows)] = 1.0 / len(rows)
        head, state, m = self.sft_step(head, state, jnp.asarray(idx),
                                       jnp.asarray(weight, self.dtype))
        record("sft", m)
    return head

  def rl(self, head, record):
    reference = self.policy(head)
    state = self.rl_opt.init(head)
    prev = None
    steps, converged = 0, False
    for steps in range(1, self.settings.rl_max_steps + 1):
      head, state, m = self.rl_step(head, state, reference)
      record("rl", m)
      value = float(m["rl_objective"])
      if prev is not None and abs(value - prev) <= self.settings.rl_tol * max(1.0, abs(value)):
        converged = True
        break
      prev = value
    return head, steps, converged


def run_experiment(train: Features, test: Features, label_rows: np.ndarray,
                   settings: ExperimentSettings = ExperimentSettings(),
                   reference_test: np.ndarray | None = None,
                   on_step: Callable[[str, int], None] | None = None) -> dict:
  """Runs both pipelines from the same base head.

  Args:
    train: training features and gold labels.
    test: held-out features and gold labels.
    label_rows: [2, H] LM-head rows of the labels' first tokens (W's initial value).
    settings: hyper-parameters.
    reference_test: [N_test, 2] the model's full-label probabilities on the test sentences
      (optional; reported as the full-sequence base level beside the head's).
    on_step: progress callback (pipeline, step).

  Returns:
    A JSON-ready dict: settings, base levels, C₁ of Theorem 3.1 on the training instance, per
    pipeline the per-step curves (step 0 = base), the phase boundary, RL steps and convergence,
    and a summary.
  """
  if settings.optimizer not in ("sgd", "adam"):
    raise ValueError(f"optimizer is {settings.optimizer!r}, expected 'sgd' or 'adam'")
  dtype = jnp.float64
  trainer = _Trainer(settings, train, test, dtype)
  base = pm.LinearHead(W=jnp.asarray(label_rows, dtype), b=jnp.zeros(2, dtype))
  base_metrics = {k: float(v) for k, v in trainer.metrics(base).items()}
  out = {
      "settings": dataclasses.asdict(settings) | {"learning_rate": settings.learning_rate()},
      "sizes": {"train": int(train.hidden.shape[0]), "test": int(test.hidden.shape[0]),
                "hidden": int(train.hidden.shape[1])},
      "base": base_metrics,
      "c1_theorem_3_1": float(obj.c1(rl_stage_after_sft(trainer.train[1]))),
      "pipelines": {},
  }
  if reference_test is not None:
    ref = np.asarray(reference_test, np.float64)
    g = np.asarray(test.gold)
    p_gold = ref[np.arange(len(g)), g]
    out["base_full_label"] = {
        "test_sft_loss": float(-np.mean(np.log(p_gold))),
        "test_reward": float(np.mean(2 * p_gold - 1)),
        "test_accuracy": float(np.mean(np.argmax(ref, axis=1) == g)),
    }
  for name in PIPELINES:
    rng = np.random.default_rng(settings.seed)
    curves = {k: [base_metrics[k]] for k in METRICS}
    phases = ["base"]

    def record(phase, m, curves=curves, phases=phases, name=name):
      for k in METRICS:
        curves[k].append(float(m[k]))
      phases.append(phase)
      if on_step:
        on_step(name, len(phases) - 1)

    if name == "sft_then_rl":
      head = trainer.sft(base, rng, record)
      boundary = len(phases) - 1
      head, rl_steps, converged = trainer.rl(head, record)
    else:
      head, rl_steps, converged = trainer.rl(base, record)
      boundary = len(phases) - 1
      head = trainer.sft(head, rng, record)
    out["pipelines"][name] = {
        "curves": curves, "phases": phases, "boundary": boundary, "rl_steps": rl_steps,
        "rl_converged": converged, "summary": summarize(curves, boundary, base_metrics),
    }
  return out


def summarize(curves: dict, boundary: int, base: dict) -> dict:
  """Per metric: base, end of phase 1, end of phase 2, min and max over phase 2."""
  out = {}
  for k in METRICS:
    c = np.asarray(curves[k])
    phase2 = c[boundary:]
    out[k] = {"base": base[k], "after_phase1": float(c[boundary]), "final": float(c[-1]),
              "phase2_min": float(phase2.min()), "phase2_max": float(phase2.max())}
  return out


def run_model_experiment(weights, tokenizer, train_examples: Sequence[Example],
                         test_examples: Sequence[Example], settings: ExperimentSettings,
                         chat: bool = False, batch_size: int = 16, on_batch=None) -> dict:
  """Extracts features of both splits with the model, then :func:`run_experiment`.

  Args:
    on_batch: progress callback, called with the fraction of one batch of sentences scored.
  """
  tr = extract(weights, tokenizer, train_examples, settings.beta, chat=chat,
               batch_size=batch_size, on_batch=on_batch)
  te = extract(weights, tokenizer, test_examples, settings.beta, chat=chat,
               batch_size=batch_size, on_batch=on_batch)
  result = run_experiment(Features(tr.hidden, tr.gold), Features(te.hidden, te.gold),
                          tr.label_rows, settings,
                          reference_test=np.asarray(te.instance.reference))
  result["labels"] = tr.labels
  result["chat"] = chat
  return result

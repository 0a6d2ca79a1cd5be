r"""Shared-parameter policies π_W(·|x) = softmax(W φ(x) + b) over features φ (THEORY.md E).

A :class:`LinearHead` (W [Y, k], b [Y]) is a pytree; everything else is a pure function of a head,
features φ [N, k] and an :class:`Instance` over the same N prompts (its weights select and weight
the prompts an objective sees: :func:`restrict` keeps a subset, e.g. the train or held-out
split). Tabular softmax is the special case φ = one-hot (:func:`one_hot_features`), W = θᵀ, b = 0.
Gradients are exact expectations (no sampling), by autodiff. The bridge reuses this class with
φ(x) = a real model's final hidden state and W, b initialised from its LM-head rows.

The shared-parameter experiment (THEORY.md C1 consequence and E): on gold-label ±1 data, where
C₁ = 0 in tabular form, RL after SFT raises the held-out SFT loss and SFT after RL lowers the
held-out reward when parameters are shared, while with one-hot features (tabular) held-out
prompts never move. :func:`gold_label_task`, :func:`sft_then_rl_experiment`,
:func:`rl_then_sft_experiment` run it.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389, §5 (the CoLA experiment with Qwen3-0.6B).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from theory import objectives as obj
from theory.instance import Instance

__all__ = [
    "LinearHead", "init_head", "head_from_tabular", "logits", "log_policy", "restrict",
    "with_reference", "sft_loss", "reward", "regularized_reward", "kl_reference", "objective",
    "objective_grad", "train", "train_minibatch", "one_hot_features", "gaussian_features",
    "low_rank_features", "clustered_features", "split_mask", "GoldTask", "gold_label_task",
    "sft_then_rl_experiment", "rl_then_sft_experiment",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearHead:
  """A linear softmax head.

  Attributes:
    W: [Y, k] weights (rows are responses, like an LM head).
    b: [Y] biases.
  """

  W: jax.Array
  b: jax.Array


def init_head(key: jax.Array, n_responses: int, n_features: int, scale: float = 0.0,
              dtype=None) -> LinearHead:
  """W ~ N(0, scale²/k), b = 0 (scale 0: the uniform policy)."""
  dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  W = scale / jnp.sqrt(n_features) * jax.random.normal(key, (n_responses, n_features), dtype)
  return LinearHead(W=W, b=jnp.zeros((n_responses,), dtype))


def head_from_tabular(theta: jax.Array) -> LinearHead:
  """The head with one-hot features that reproduces tabular logits θ [N, Y]: W = θᵀ, b = 0."""
  return LinearHead(W=theta.T, b=jnp.zeros((theta.shape[1],), theta.dtype))


def logits(head: LinearHead, features: jax.Array) -> jax.Array:
  """[N, Y] logits W φ(x) + b for features [N, k]."""
  return features @ head.W.T + head.b[None, :]


def log_policy(head: LinearHead, features: jax.Array, inst: Instance) -> jax.Array:
  """[N, Y] log π_W(·|x), a softmax over the RL support of ``inst`` (masked entries −inf)."""
  return obj.policy_log_probs(inst, logits(head, features))


def restrict(inst: Instance, prompt_mask: jax.Array) -> Instance:
  """The instance seen on a subset of prompts: weights w·mask renormalised (others weight 0)."""
  w = jnp.where(prompt_mask, inst.prompt_weights, 0.0)
  return dataclasses.replace(inst, prompt_weights=w / jnp.sum(w))


def with_reference(inst: Instance, log_pi: jax.Array) -> Instance:
  """The instance with reference policy exp(log π) (e.g. the SFT end policy before RL)."""
  return dataclasses.replace(inst, reference=jnp.exp(log_pi))


def sft_loss(head, features, inst) -> jax.Array:
  """L(π_W) on the prompts ``inst`` weights (see :func:`theory.objectives.sft_loss`)."""
  return obj.sft_loss(inst, log_policy(head, features, inst))


def reward(head, features, inst) -> jax.Array:
  """J(π_W) on the prompts ``inst`` weights."""
  return obj.reward(inst, log_policy(head, features, inst))


def regularized_reward(head, features, inst) -> jax.Array:
  """J_β(π_W; ρ) on the prompts ``inst`` weights."""
  return obj.regularized_reward(inst, log_policy(head, features, inst))


def kl_reference(head, features, inst) -> jax.Array:
  """E_w KL(π_W ‖ ρ)."""
  log_pi = log_policy(head, features, inst)
  return obj.expect(inst, obj.kl_rows(log_pi, obj.safe_log(inst.reference)))


def objective(head, features, inst, sft_weight, rl_weight) -> jax.Array:
  """The minimised objective a·L − b·J_β (a = 1, b = 0: SFT; a = 0, b = 1: RL; joint)."""
  return sft_weight * sft_loss(head, features, inst) - rl_weight * regularized_reward(
      head, features, inst)


objective_grad = jax.grad(objective)
objective_grad.__doc__ = "∇_head of :func:`objective` (exact expectation, autodiff)."


def _optimizer(name, learning_rate):
  if name == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
  if name == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
  raise ValueError(f"unknown optimizer {name!r} (known: sgd, adam)")


@functools.partial(jax.jit, static_argnames=("n_steps", "optimizer", "record_every", "train_bias"))
def train(head: LinearHead, features: jax.Array, inst: Instance, sft_weight, rl_weight, *,
          n_steps: int, optimizer: str = "adam", learning_rate=0.05,
          eval_insts: tuple = (), record_every: int = 1, train_bias: bool = True):
  """Full-batch training of a·L − b·J_β on the prompts ``inst`` weights.

  Args:
    head: initial head.
    features: [N, k].
    inst: training instance (weights select the train prompts; reference = the RL reference).
    sft_weight, rl_weight: a and b.
    n_steps: optimiser steps.
    optimizer: "sgd" or "adam"; learning_rate traced.
    eval_insts: instances (same prompts, other weights, e.g. held-out) to evaluate on.
    record_every: record metrics every this many steps (and at step 0).
    train_bias: False keeps b fixed (tabular one-hot heads: b would couple every prompt).

  Returns:
    (final head, history dict of [n_steps // record_every + 1] arrays: step, and for each
    evaluation instance i: ``sft_loss_i``, ``reward_i``, ``regularized_reward_i``).
  """
  opt = _optimizer(optimizer, learning_rate)

  def metrics(h):
    out = {}
    for i, ev in enumerate(eval_insts):
      out[f"sft_loss_{i}"] = sft_loss(h, features, ev)
      out[f"reward_{i}"] = reward(h, features, ev)
      out[f"regularized_reward_{i}"] = regularized_reward(h, features, ev)
    return out

  def step(state, _):
    h, os = state
    g = objective_grad(h, features, inst, sft_weight, rl_weight)
    if not train_bias:
      g = dataclasses.replace(g, b=jnp.zeros_like(g.b))
    upd, os = opt.update(g, os, h)
    return (optax.apply_updates(h, upd), os), None

  def block(state, _):
    state, _ = jax.lax.scan(step, state, None, length=record_every)
    return state, metrics(state[0])

  n_blocks = n_steps // record_every
  (head_end, _), hist = jax.lax.scan(block, (head, opt.init(head)), None, length=n_blocks)
  first = metrics(head)
  hist = {k: jnp.concatenate([first[k][None], v]) for k, v in hist.items()}
  hist["step"] = jnp.arange(n_blocks + 1) * record_every
  return head_end, hist


@functools.partial(jax.jit, static_argnames=("n_epochs", "batch_size", "optimizer"))
def train_minibatch(head: LinearHead, features: jax.Array, inst: Instance, sft_weight, rl_weight,
                    key: jax.Array, *, n_epochs: int, batch_size: int, optimizer: str = "adam",
                    learning_rate=0.05):
  """Minibatch epochs: each epoch shuffles the prompts with weight > 0 into batches.

  Each minibatch objective uses the exact expectation over responses on its prompts (weights
  renormalised within the batch). Prompts of weight 0 are never drawn.

  Returns:
    (final head, [n_epochs + 1] training objective after each epoch).
  """
  opt = _optimizer(optimizer, learning_rate)
  n = features.shape[0]
  n_batches = max(1, n // batch_size)
  active = inst.prompt_weights > 0

  def epoch(state, k):
    h, os = state
    # Active prompts first, in random order; batches cover the first n_batches * batch_size.
    order = jnp.argsort(jnp.where(active, jax.random.uniform(k, (n,)), 2.0))

    def mb(st, i):
      hh, oo = st
      idx = jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,))
      mask = jnp.zeros((n,), bool).at[idx].set(True) & active
      sub = restrict(inst, mask)
      g = objective_grad(hh, features, sub, sft_weight, rl_weight)
      g = jax.tree.map(lambda a: jnp.where(jnp.any(mask), a, 0.0), g)
      upd, oo = opt.update(g, oo, hh)
      return (optax.apply_updates(hh, upd), oo), None

    (h, os), _ = jax.lax.scan(mb, (h, os), jnp.arange(n_batches))
    return (h, os), objective(h, features, inst, sft_weight, rl_weight)

  keys = jax.random.split(key, n_epochs)
  (head_end, _), values = jax.lax.scan(epoch, (head, opt.init(head)), keys)
  first = objective(head, features, inst, sft_weight, rl_weight)
  return head_end, jnp.concatenate([first[None], values])


# ----------------------------------------------------------------------------- features

def one_hot_features(n_prompts: int, dtype=None) -> jax.Array:
  """[N, N] identity: the tabular special case."""
  dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  return jnp.eye(n_prompts, dtype=dtype)


def gaussian_features(key, n_prompts: int, dim: int, dtype=None) -> jax.Array:
  """[N, k] i.i.d. N(0, 1) features."""
  dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  return jax.random.normal(key, (n_prompts, dim), dtype)


def low_rank_features(key, n_prompts: int, dim: int, rank: int, noise: float = 0.0,
                      dtype=None) -> jax.Array:
  """[N, k] features on a random rank-r subspace (plus isotropic noise of std ``noise``)."""
  k1, k2, k3 = jax.random.split(key, 3)
  z = gaussian_features(k1, n_prompts, rank, dtype)
  basis = gaussian_features(k2, rank, dim, dtype) / jnp.sqrt(rank)
  return z @ basis + noise * gaussian_features(k3, n_prompts, dim, dtype)


def clustered_features(key, n_prompts: int, dim: int, n_clusters: int, spread: float = 0.3,
                       dtype=None):
  """([N, k] features, [N] cluster ids): unit-scale cluster centres plus N(0, spread²) noise."""
  k1, k2, k3 = jax.random.split(key, 3)
  centres = gaussian_features(k1, n_clusters, dim, dtype)
  ids = jax.random.randint(k2, (n_prompts,), 0, n_clusters)
  return centres[ids] + spread * gaussian_features(k3, n_prompts, dim, dtype), ids


def split_mask(key, n_prompts: int, train_fraction: float = 0.5) -> jax.Array:
  """[N] bool train mask with round(train_fraction · N) prompts (the rest are held out)."""
  n_train = int(round(train_fraction * n_prompts))
  order = jax.random.permutation(key, n_prompts)
  return jnp.zeros((n_prompts,), bool).at[order[:n_train]].set(True)


# ----------------------------------------------------------------------------- experiment

@dataclasses.dataclass(frozen=True)
class GoldTask:
  """A gold-label task: one-hot data on noisy gold labels, reward +1 on the gold label, −1 else.

  Attributes:
    inst: instance over all N prompts (uniform weights; reference = uniform base policy).
    features: [N, k] shared features.
    train: [N] bool train mask (the rest are held out).
    labels: [N] gold labels.
    tabular: one-hot features (the bias is then frozen, so prompts share no parameter).
  """

  inst: Instance
  features: jax.Array
  train: jax.Array
  labels: jax.Array
  tabular: bool = False

  @property
  def train_inst(self) -> Instance:
    return restrict(self.inst, self.train)

  @property
  def held_out_inst(self) -> Instance:
    return restrict(self.inst, ~self.train)


def gold_label_task(key, n_prompts: int = 160, dim: int = 40, n_responses: int = 2,
                    label_noise: float = 0.2, beta: float = 0.05, train_fraction: float = 0.5,
                    family: str = "gaussian") -> GoldTask:
  """A gold-label task with labels from a hidden linear rule, flipped with prob ``label_noise``.

  The SFT targets are the gold labels (one-hot d) and the reward is +1 exactly on them (−1
  elsewhere), so r is constant on supp d: C₁ = 0 in tabular form (Theorem 3.1 predicts no SFT-loss
  increase). ``family``: "gaussian", "low_rank" (rank dim/4) or "clustered" (8 clusters), or
  "one_hot" (tabular: features are the identity; the hidden rule uses Gaussian features).
  """
  kf, kw, kn, kl, ks = jax.random.split(key, 5)
  gauss = gaussian_features(kf, n_prompts, dim)
  if family == "gaussian":
    feats = gauss
  elif family == "low_rank":
    feats = low_rank_features(kf, n_prompts, dim, max(1, dim // 4), noise=0.1)
  elif family == "clustered":
    feats, _ = clustered_features(kf, n_prompts, dim, 8)
  elif family == "one_hot":
    feats = one_hot_features(n_prompts)
  else:
    raise ValueError(f"unknown feature family {family!r}")
  rule_feats = gauss if family == "one_hot" else feats
  w_true = jax.random.normal(kw, (n_responses, rule_feats.shape[1]), gauss.dtype)
  clean = jnp.argmax(rule_feats @ w_true.T, axis=-1)
  flip = jax.random.uniform(kn, (n_prompts,)) < label_noise
  other = (clean + jax.random.randint(kl, (n_prompts,), 1, n_responses)) % n_responses
  labels = jnp.where(flip, other, clean)
  data = jax.nn.one_hot(labels, n_responses, dtype=gauss.dtype)
  rew = 2.0 * data - 1.0
  ref = jnp.full((n_prompts, n_responses), 1.0 / n_responses, gauss.dtype)
  inst = Instance(prompt_weights=jnp.full((n_prompts,), 1.0 / n_prompts, gauss.dtype), data=data,
                  reference=ref, reward=rew, beta=jnp.asarray(beta, gauss.dtype),
                  response_mask=jnp.ones((n_prompts, n_responses), bool))
  return GoldTask(inst=inst, features=feats, train=split_mask(ks, n_prompts, train_fraction),
                  labels=labels, tabular=family == "one_hot")


def _phase_history(hist, names=("train", "held_out")):
  out = {"step": hist["step"]}
  for i, nm in enumerate(names):
    for q in ("sft_loss", "reward", "regularized_reward"):
      out[f"{q}_{nm}"] = hist[f"{q}_{i}"]
  return out


def sft_then_rl_experiment(task: GoldTask, *, sft_steps: int = 60, rl_steps: int = 300,
                           learning_rate: float = 0.05, record_every: int = 10) -> dict:
  """SFT from the base head (W = 0: uniform), then RL (reference = the SFT policy) on train prompts.

  Returns:
    dict with ``sft`` and ``rl`` histories (step; sft_loss / reward / regularized_reward on
    ``train`` and ``held_out``), ``base_sft_loss_held_out``, ``base_sft_loss_train``.
  """
  n_y, k = task.inst.data.shape[1], task.features.shape[1]
  head0 = LinearHead(W=jnp.zeros((n_y, k), task.features.dtype),
                     b=jnp.zeros((n_y,), task.features.dtype))
  evals = (task.train_inst, task.held_out_inst)
  head_sft, h_sft = train(head0, task.features, task.train_inst, 1.0, 0.0, n_steps=sft_steps,
                          learning_rate=learning_rate, eval_insts=evals,
                          record_every=record_every, train_bias=not task.tabular)
  ref = log_policy(head_sft, task.features, task.inst)
  rl_inst = with_reference(task.train_inst, ref)
  evals_rl = tuple(with_reference(e, ref) for e in evals)
  _, h_rl = train(head_sft, task.features, rl_inst, 0.0, 1.0, n_steps=rl_steps,
                  learning_rate=learning_rate, eval_insts=evals_rl, record_every=record_every,
                  train_bias=not task.tabular)
  return dict(sft=_phase_history(h_sft), rl=_phase_history(h_rl),
              base_sft_loss_held_out=sft_loss(head0, task.features, evals[1]),
              base_sft_loss_train=sft_loss(head0, task.features, evals[0]))


def rl_then_sft_experiment(task: GoldTask, *, rl_steps: int = 300, sft_steps: int = 300,
                           learning_rate: float = 0.05, record_every: int = 10) -> dict:
  """RL from the base head (reference = base, uniform), then SFT, both on train prompts.

  Returns:
    dict with ``rl`` and ``sft`` histories and ``base_reward_held_out``, ``base_reward_train``.
  """
  n_y, k = task.inst.data.shape[1], task.features.shape[1]
  head0 = LinearHead(W=jnp.zeros((n_y, k), task.features.dtype),
                     b=jnp.zeros((n_y,), task.features.dtype))
  evals = (task.train_inst, task.held_out_inst)
  head_rl, h_rl = train(head0, task.features, task.train_inst, 0.0, 1.0, n_steps=rl_steps,
                        learning_rate=learning_rate, eval_insts=evals, record_every=record_every,
                        train_bias=not task.tabular)
  _, h_sft = train(head_rl, task.features, task.train_inst, 1.0, 0.0, n_steps=sft_steps,
                   learning_rate=learning_rate, eval_insts=evals, record_every=record_every,
                   train_bias=not task.tabular)
  return dict(rl=_phase_history(h_rl), sft=_phase_history(h_sft),
              base_reward_held_out=reward(head0, task.features, evals[1]),
              base_reward_train=reward(head0, task.features, evals[0]))

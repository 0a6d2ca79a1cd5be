r"""The held-out experiment with shared parameters (THEORY.md C1 consequence, and E).

On gold-label ±1 data, where C₁ = 0 in tabular form, RL after SFT raises the held-out SFT loss and
SFT after RL lowers the held-out reward when parameters are shared, while with one-hot features
(tabular) held-out prompts never move. This is where the paper's CoLA observations come from: the
theorem's tabular setting cannot produce them.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389, §5 (the CoLA experiment with Qwen3-0.6B).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .instance import Instance, with_reference
from .parametric import (
  LinearHead,
  clustered_features,
  gaussian_features,
  log_policy,
  low_rank_features,
  one_hot_features,
  restrict,
  reward,
  sft_loss,
  split_mask,
  train,
)

__all__ = ["GoldTask", "gold_label_task", "PIPELINES", "run_pipeline"]

PIPELINES = ("sft_then_rl", "rl_then_sft")


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

  Examples:
    >>> import jax
    >>> task = gold_label_task(jax.random.PRNGKey(0), n_prompts=8, dim=4)
    >>> task.features.shape, int(task.train.sum()), task.inst.data.sum(axis=1).tolist() == [1.0] * 8
    ((8, 4), 4, True)
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


def _sft_then_rl(task: GoldTask, *, sft_steps: int = 60, rl_steps: int = 300,
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
  rl_inst = with_reference(task.train_inst, jnp.exp(ref))
  evals_rl = tuple(with_reference(e, jnp.exp(ref)) for e in evals)
  _, h_rl = train(head_sft, task.features, rl_inst, 0.0, 1.0, n_steps=rl_steps,
                  learning_rate=learning_rate, eval_insts=evals_rl, record_every=record_every,
                  train_bias=not task.tabular)
  return dict(sft=_phase_history(h_sft), rl=_phase_history(h_rl),
              base_sft_loss_held_out=sft_loss(head0, task.features, evals[1]),
              base_sft_loss_train=sft_loss(head0, task.features, evals[0]))


def _rl_then_sft(task: GoldTask, *, rl_steps: int = 300, sft_steps: int = 300,
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


def run_pipeline(task: GoldTask, pipeline: str, **kwargs) -> dict:
  """Runs the named pipeline ("sft_then_rl" or "rl_then_sft") on a gold task.

  SFT-then-RL: SFT from the base head (W = 0: uniform), then RL with the SFT policy as reference;
  RL-then-SFT: RL from the base head (reference = base), then SFT; both on the train prompts.
  Keyword arguments set the phase lengths (``sft_steps``, ``rl_steps``), ``learning_rate`` and
  ``record_every``.

  Returns:
    dict with one history per phase (``sft``, ``rl``: step; sft_loss / reward /
    regularized_reward on ``train`` and ``held_out``) and the base levels.

  Examples:
    >>> import jax
    >>> task = gold_label_task(jax.random.PRNGKey(0), n_prompts=8, dim=4)
    >>> res = run_pipeline(task, "sft_then_rl", sft_steps=2, rl_steps=2)
    >>> sorted(res)
    ['base_sft_loss_held_out', 'base_sft_loss_train', 'rl', 'sft']
  """
  if pipeline == "sft_then_rl":
    return _sft_then_rl(task, **kwargs)
  if pipeline == "rl_then_sft":
    return _rl_then_sft(task, **kwargs)
  raise ValueError(f"pipeline is {pipeline!r}, expected one of {', '.join(PIPELINES)}")

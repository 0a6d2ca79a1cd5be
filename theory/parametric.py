r"""Shared-parameter policies π_W(·|x) = softmax(W φ(x) + b) over features φ (THEORY.md E).

A :class:`LinearHead` (W [Y, k], b [Y]) is a pytree; everything else is a pure function of a head,
features φ [N, k] and an :class:`Instance` over the same N prompts (its weights select and weight
the prompts an objective sees: :func:`restrict` keeps a subset, e.g. the train or held-out
split). Tabular softmax is the special case φ = one-hot (:func:`one_hot_features`), W = θᵀ, b = 0.
Gradients are exact expectations (no sampling), by autodiff. The bridge reuses this class with
φ(x) = a real model's final hidden state and W, b initialised from its LM-head rows.

The held-out experiment with shared parameters lives in :mod:`gold_task`.

References:
  Niu, Bai, Han, Zhang, arXiv 2601.07389, §5 (the CoLA experiment with Qwen3-0.6B).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from . import objectives as obj
from .instance import Instance
from .optimizers import make_optimizer

__all__ = [
    "LinearHead", "init_head", "head_from_tabular", "logits", "log_policy", "restrict",
    "sft_loss", "reward", "regularized_reward", "kl_reference", "objective",
    "objective_grad", "train", "train_minibatch", "one_hot_features", "gaussian_features",
    "low_rank_features", "clustered_features", "split_mask",
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
  """W ~ N(0, scale²/k), b = 0 (scale 0: the uniform policy).

  Examples:
    >>> import jax
    >>> head = init_head(jax.random.PRNGKey(0), n_responses=3, n_features=4)
    >>> # scale 0: W = 0, the uniform policy
    >>> head.W.shape, float(abs(head.W).max()), head.b.tolist()
    ((3, 4), 0.0, [0.0, 0.0, 0.0])
  """
  dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  W = scale / jnp.sqrt(n_features) * jax.random.normal(key, (n_responses, n_features), dtype)
  return LinearHead(W=W, b=jnp.zeros((n_responses,), dtype))


def head_from_tabular(theta: jax.Array) -> LinearHead:
  """The head with one-hot features that reproduces tabular logits θ [N, Y]: W = θᵀ, b = 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> theta = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    >>> # one-hot features give θ back
    >>> logits(head_from_tabular(theta), one_hot_features(2)).tolist()
    [[0.0, 1.0], [2.0, 3.0]]
  """
  return LinearHead(W=theta.T, b=jnp.zeros((theta.shape[1],), theta.dtype))


def logits(head: LinearHead, features: jax.Array) -> jax.Array:
  """[N, Y] logits W φ(x) + b for features [N, k].

  Examples:
    >>> import jax.numpy as jnp
    >>> # W [Y, k], b [Y]
    >>> head = LinearHead(jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.5, 0.0]))
    >>> logits(head, jnp.array([[1.0, 1.0]])).tolist()  # W φ + b
    [[1.5, 2.0]]
  """
  return features @ head.W.T + head.b[None, :]


def log_policy(head: LinearHead, features: jax.Array, inst: Instance) -> jax.Array:
  """[N, Y] log π_W(·|x), a softmax over the RL support of ``inst`` (masked entries −inf).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> head = head_from_tabular(jnp.array([[0.0, jnp.log(3.0)]]))
    >>> jnp.exp(log_policy(head, one_hot_features(1), inst)).round(6).tolist()  # softmax(0, log 3)
    [[0.25, 0.75]]
  """
  return obj.policy_log_probs(inst, logits(head, features))


def restrict(inst: Instance, prompt_mask: jax.Array) -> Instance:
  """The instance seen on a subset of prompts: weights w·mask renormalised (others weight 0).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([0.25, 0.75], [[0.5, 0.5]] * 2, [[0.0, 1.0]] * 2, 1.0)
    >>> import jax.numpy as jnp
    >>> # renormalised on the subset
    >>> restrict(inst, jnp.array([True, False])).prompt_weights.tolist()
    [1.0, 0.0]
  """
  w = jnp.where(prompt_mask, inst.prompt_weights, 0.0)
  return dataclasses.replace(inst, prompt_weights=w / jnp.sum(w))


def sft_loss(head, features, inst) -> jax.Array:
  """L(π_W) on the prompts ``inst`` weights (see :func:`~nondecoupling.theory.objectives.sft_loss`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # uniform π: log 2
    >>> round(float(sft_loss(head_from_tabular(jnp.zeros((1, 2))), one_hot_features(1), inst)), 6)
    0.693147
  """
  return obj.sft_loss(inst, log_policy(head, features, inst))


def reward(head, features, inst) -> jax.Array:
  """J(π_W) on the prompts ``inst`` weights.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # uniform π: ½ · 0 + ½ · 1
    >>> float(reward(head_from_tabular(jnp.zeros((1, 2))), one_hot_features(1), inst))
    0.5
  """
  return obj.reward(inst, log_policy(head, features, inst))


def regularized_reward(head, features, inst) -> jax.Array:
  """J_β(π_W; ρ) on the prompts ``inst`` weights.

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # π = ρ: J = ½
    >>> float(regularized_reward(head_from_tabular(jnp.zeros((1, 2))), one_hot_features(1), inst))
    0.5
  """
  return obj.regularized_reward(inst, log_policy(head, features, inst))


def kl_reference(head, features, inst) -> jax.Array:
  """E_w KL(π_W ‖ ρ).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.25, 0.75]])
    >>> # KL((½, ½)‖(¼, ¾))
    >>> round(float(kl_reference(head_from_tabular(jnp.zeros((1, 2))), one_hot_features(1), inst)), 6)
    0.143841
  """
  log_pi = log_policy(head, features, inst)
  return obj.expect(inst, obj.kl_rows(log_pi, obj.safe_log(inst.reference)))


def objective(head, features, inst, sft_weight, rl_weight) -> jax.Array:
  """The minimised objective a·L − b·J_β (a = 1, b = 0: SFT; a = 0, b = 1: RL; joint).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> # log 2 − ½
    >>> round(float(objective(head_from_tabular(jnp.zeros((1, 2))), one_hot_features(1), inst, 1.0, 1.0)), 6)
    0.193147
  """
  return sft_weight * sft_loss(head, features, inst) - rl_weight * regularized_reward(
      head, features, inst)


objective_grad = jax.grad(objective)
objective_grad.__doc__ = """∇_head of :func:`objective` (exact expectation, autodiff).

Examples:
  >>> import jax.numpy as jnp
  >>> from nondecoupling.theory.instance import make_instance
  >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
  >>> g = objective_grad(head_from_tabular(jnp.zeros((1, 2))), one_hot_features(1), inst, 0.0, 1.0)
  >>> g.W.tolist(), g.b.tolist()  # −∇J_β at π = ρ: −F r = (¼, −¼) on W and on b
  ([[0.25], [-0.25]], [0.25, -0.25])
"""


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
  opt = make_optimizer(optimizer, learning_rate)

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
  opt = make_optimizer(optimizer, learning_rate)
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
  """[N, N] identity: the tabular special case.

  Examples:
    >>> one_hot_features(2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  return jnp.eye(n_prompts, dtype=dtype)


def gaussian_features(key, n_prompts: int, dim: int, dtype=None) -> jax.Array:
  """[N, k] i.i.d. N(0, 1) features.

  Examples:
    >>> import jax
    >>> gaussian_features(jax.random.PRNGKey(0), 5, 3).shape
    (5, 3)
  """
  dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  return jax.random.normal(key, (n_prompts, dim), dtype)


def low_rank_features(key, n_prompts: int, dim: int, rank: int, noise: float = 0.0,
                      dtype=None) -> jax.Array:
  """[N, k] features on a random rank-r subspace (plus isotropic noise of std ``noise``).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> phi = low_rank_features(jax.random.PRNGKey(0), 6, 4, rank=2)
    >>> phi.shape, int(jnp.linalg.matrix_rank(phi))
    ((6, 4), 2)
  """
  k1, k2, k3 = jax.random.split(key, 3)
  z = gaussian_features(k1, n_prompts, rank, dtype)
  basis = gaussian_features(k2, rank, dim, dtype) / jnp.sqrt(rank)
  return z @ basis + noise * gaussian_features(k3, n_prompts, dim, dtype)


def clustered_features(key, n_prompts: int, dim: int, n_clusters: int, spread: float = 0.3,
                       dtype=None):
  """([N, k] features, [N] cluster ids): unit-scale cluster centres plus N(0, spread²) noise.

  Examples:
    >>> import jax
    >>> phi, ids = clustered_features(jax.random.PRNGKey(0), 6, 3, n_clusters=2)
    >>> phi.shape, sorted(set(ids.tolist())) == [0, 1]
    ((6, 3), True)
  """
  k1, k2, k3 = jax.random.split(key, 3)
  centres = gaussian_features(k1, n_clusters, dim, dtype)
  ids = jax.random.randint(k2, (n_prompts,), 0, n_clusters)
  return centres[ids] + spread * gaussian_features(k3, n_prompts, dim, dtype), ids


def split_mask(key, n_prompts: int, train_fraction: float = 0.5) -> jax.Array:
  """[N] bool train mask with round(train_fraction · N) prompts (the rest are held out).

  Examples:
    >>> import jax
    >>> int(split_mask(jax.random.PRNGKey(0), 10, 0.3).sum())  # round(0.3 · 10) training prompts
    3
  """
  n_train = int(round(train_fraction * n_prompts))
  order = jax.random.permutation(key, n_prompts)
  return jnp.zeros((n_prompts,), bool).at[order[:n_train]].set(True)

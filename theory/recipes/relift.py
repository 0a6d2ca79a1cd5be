r"""ReLIFT (Ma et al., arXiv 2506.07527): Dr.GRPO-style RL plus a buffer of all-failed prompts.

The released code (TheRoadQaQ/ReLIFT @ eb95454, ``relift/verl/verl/relift/{trainer,actor}.py``;
``examples/*/train.sh``): GRPO without std (``grpo_use_std=False``), no clip, loss
Σ_tokens(−Â·ratio)/L_max (``loss_remove_token_mean``: for atomic responses a *sum* over the n
samples, fusion-methods.md Rule 4) minus 0.001·H. Every prompt whose n rollouts all fail is
prepended, with its demonstration, to the SFT buffer; when the buffer holds ``sft_data_size`` = S
items the first S (the newest) are taken and one SFT step (token-mean NLL − 0.001·H, i.e. the mean
over the S items) is run after the RL step.

- Exact field :func:`relift_field`: the RL step plus the amortised SFT drift
  r_sft (B/S) w_x (1 − p_x)^n (d_x − π_x + c_H ∇H_x) (the long-run rate of buffered items).
- Trainer: :func:`relift_rl_field` at each step and the buffer in the state hook
  (:func:`relift_init`, :func:`relift_update`): the expected inflow B w_x (1 − p_x)^n of every step
  in its own slot, consumed newest first (:mod:`.buffer`).

References: fusion-methods.md §6.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..objectives import entropy_grad, fisher_matvec, rl_support
from .aggregation import RL_AGGREGATIONS, group_scale
from .base import Recipe, finish, policy
from .binomial import binomial_gate_probability
from .buffer import BUFFER_ORDERS, buffer_init, buffer_push, buffer_take
from .groups import (
  enumerated_advantage,
  fill_reward_levels,
  mean_group_advantage,
  resolve_levels,
  sample_group_advantage,
  success,
  success_stats,
)
from .options import (
  require_bool,
  require_choice,
  require_finite,
  require_int,
  require_non_negative,
  require_positive,
)
from .sampling import Draws, score

__all__ = ["ReLIFTConfig", "relift_field", "relift_rl_field", "relift_sft_direction",
           "relift_inflow", "relift_estimate", "relift_init", "relift_update", "RELIFT"]


@dataclasses.dataclass(frozen=True)
class ReLIFTConfig:
  """ReLIFT: Dr.GRPO-style RL; prompts whose n rollouts all fail go to a buffer; SFT when full.

  Defaults (TheRoadQaQ/ReLIFT ``examples/*/train.sh``): n = 8, no std, no clip, entropy 0.001,
  RL loss summed over the group, batch 128 prompts, buffer (sft_data_size) 128, SFT lr = RL lr
  (ratio 1), SFT entropy 0.001, newest items first.

  Attributes:
    n_rollouts: n ≥ 1 rollouts per prompt (n = 1: Â = r, verl's rule).
    use_std: std normalisation of the RL advantage; eps: its offset (> 0).
    rl_coef: RL coefficient (finite); entropy_coef: RL entropy bonus (finite).
    batch_prompts: B ≥ 1 prompts per step (sets the buffer inflow B w_x (1 − p_x)^n).
    buffer_size: S ≥ 1 items per SFT step (``sft_data_size``).
    sft_lr_ratio: SFT learning rate over the RL one (≥ 0; 0 disables SFT).
    sft_entropy_coef: entropy bonus of the SFT step (finite).
    success_threshold: a rollout fails iff r ≤ threshold (finite).
    rl_aggregation: ``group_sum`` (published: Σ/L_max) or ``group_mean``.
    buffer_order: ``newest_first`` (the released code) or ``oldest_first``.
    buffer_slots: K ≥ 1 per-step slots kept by the trainer (beyond K the two oldest merge).
    reward_levels: distinct rewards per prompt (None: read from the instance).
  """
  n_rollouts: int = 8
  use_std: bool = False
  eps: float = 1e-6
  rl_coef: float = 1.0
  entropy_coef: float = 0.001
  batch_prompts: int = 128
  buffer_size: int = 128
  sft_lr_ratio: float = 1.0
  sft_entropy_coef: float = 0.001
  success_threshold: float = 0.0
  rl_aggregation: str = "group_sum"
  buffer_order: str = "newest_first"
  buffer_slots: int = 256
  reward_levels: int | None = None

  def __post_init__(self):
    require_int(self, "n_rollouts", 1)
    require_bool(self, "use_std")
    require_positive(self, "eps")
    require_finite(self, "rl_coef")
    require_finite(self, "entropy_coef")
    require_int(self, "batch_prompts", 1)
    require_int(self, "buffer_size", 1)
    require_non_negative(self, "sft_lr_ratio")
    require_finite(self, "sft_entropy_coef")
    require_finite(self, "success_threshold")
    require_choice(self, "rl_aggregation", RL_AGGREGATIONS)
    require_choice(self, "buffer_order", BUFFER_ORDERS)
    require_int(self, "buffer_slots", 1)
    require_int(self, "reward_levels", 1, optional=True)


def relift_rl_field(inst, theta, theta_old, cfg: ReLIFTConfig):
  r"""The RL step's exact field: w_x [c_rl a F_π E[Â | y] + c_H ∇H], a = n (sum) or 1 (mean).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = ReLIFTConfig(n_rollouts=2, entropy_coef=0.0)
    >>> relift_rl_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg).tolist()  # 2 (1/2) F_π r
    [[-0.25, 0.25]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  n = cfg.n_rollouts
  if cfg.use_std:
    m = resolve_levels(inst, cfg.reward_levels)
    a_pos, a_neg = enumerated_advantage(inst, pi_old, n - 1, m, True, cfg.eps, 0.0)
    b = a_pos - a_neg
  else:
    b = mean_group_advantage(inst, pi_old, n)
  rl = cfg.rl_coef * group_scale(cfg.rl_aggregation, n) * fisher_matvec(pi, b)
  return finish(inst, rl + cfg.entropy_coef * entropy_grad(pi, log_pi))


def relift_sft_direction(inst, pi, log_pi, cfg: ReLIFTConfig):
  r"""[X, Y] per-item SFT ascent direction (d − π) + c_H ∇H (no prompt weight).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> pi = jnp.array([[0.5, 0.5]])
    >>> relift_sft_direction(inst, pi, jnp.log(pi), ReLIFTConfig()).tolist()
    [[-0.5, 0.5]]
  """
  return (inst.data - pi) + cfg.sft_entropy_coef * entropy_grad(pi, log_pi)


def relift_inflow(inst, pi_old, cfg: ReLIFTConfig):
  r"""[X] expected buffer items per step: B w_x (1 − p_x)^n (all n rollouts fail).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> relift_inflow(inst, jnp.array([[0.5, 0.5]]), ReLIFTConfig(n_rollouts=2)).tolist()
    [32.0]
  """
  p = success_stats(inst, pi_old, cfg.success_threshold)[0]
  return cfg.batch_prompts * inst.prompt_weights * binomial_gate_probability(
      p, cfg.n_rollouts, 0, 0)


def relift_field(inst, theta, theta_old, cfg: ReLIFTConfig):
  r"""The exact field: the RL step plus the amortised SFT drift
  r_sft (B/S) w_x (1 − p_x)^n (d_x − π_x + c_H ∇H_x).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = ReLIFTConfig(n_rollouts=2, entropy_coef=0.0, sft_entropy_coef=0.0)
    >>> relift_field(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg).tolist()  # RL + (1/4)(d − π)
    [[-0.375, 0.375]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  rate = cfg.sft_lr_ratio * relift_inflow(inst, pi_old, cfg) / cfg.buffer_size
  sft = jnp.where(rl_support(inst),
                  rate[:, None] * relift_sft_direction(inst, pi, log_pi, cfg), 0.0)
  return relift_rl_field(inst, theta, theta_old, cfg) + sft


def relift_estimate(inst, theta, theta_old, cfg: ReLIFTConfig, draws: Draws):
  r"""The sampled field: the RL gradient of one group, plus r_sft (B/S)(e_{y*} − π + c_H ∇H) when
  the group all failed (an unbiased estimate of :func:`relift_field`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> from nondecoupling.theory.recipes.sampling import Draws
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = ReLIFTConfig(n_rollouts=1, entropy_coef=0.0, sft_entropy_coef=0.0, buffer_size=256)
    >>> relift_estimate(inst, jnp.zeros((1, 2)), jnp.zeros((1, 2)), cfg,
    ...                 Draws(on=jnp.array([[0]]), demo=jnp.array([1]))).tolist()  # all failed
    [[-0.25, 0.25]]
  """
  log_pi, pi = policy(inst, theta)
  _, pi_old = policy(inst, theta_old)
  succ = success(inst, cfg.success_threshold)
  rl_scale = cfg.rl_coef * group_scale(cfg.rl_aggregation, cfg.n_rollouts)
  sft_scale = cfg.sft_lr_ratio * cfg.batch_prompts / cfg.buffer_size

  def row(p, lp, p_old, r, s, idx, demo):
    adv = sample_group_advantage(r[idx], cfg.use_std, cfg.eps)
    ratio = p[idx] / p_old[idx]
    rl = rl_scale * jnp.mean((adv * ratio)[:, None] * score(p, idx), axis=0)
    all_fail = ~jnp.any(s[idx])
    item = score(p, demo[None])[0] + cfg.sft_entropy_coef * entropy_grad(p, lp)
    return rl, jnp.where(all_fail, sft_scale * item, 0.0)

  rl, sft = jax.vmap(row)(pi, log_pi, pi_old, inst.reward, succ, draws.on, draws.demo)
  return finish(inst, rl + cfg.entropy_coef * entropy_grad(pi, log_pi) + sft)


def relift_init(inst, theta, cfg: ReLIFTConfig) -> jax.Array:
  """The buffer state: [buffer_slots, X] expected items per step slot and prompt (empty).

  Examples:
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> relift_init(inst, inst.data, ReLIFTConfig(buffer_slots=4)).shape
    (4, 1)
  """
  return buffer_init(cfg.buffer_slots, inst.data.shape[0], theta.dtype)


def relift_update(inst, theta_old, theta, buf, lr, cfg: ReLIFTConfig):
  r"""After an outer step: the all-failed prompts enter the buffer; when full, one SFT step.

  The expected inflow B w_x (1 − p_x)^n (p_x under the rollout policy θ_old) goes into a new slot;
  if the buffer holds at least S items, S are taken (:func:`~.buffer.buffer_take`, in
  ``buffer_order``), c_x of them from prompt x, and

  .. math:: \theta \leftarrow \theta + lr\, r_{sft} \sum_x \frac{c_x}{S}
            \big(d_x - \pi_x + c_H \nabla H_x\big)

  at the policy after the RL step (the code runs the SFT update after the actor update).

  Returns:
    (θ, buffer).

  Examples:
    >>> import jax.numpy as jnp
    >>> from nondecoupling.theory.instance import make_instance
    >>> inst = make_instance([1.0], [[0.0, 1.0]], [[0.0, 1.0]], 1.0, reference=[[0.5, 0.5]])
    >>> cfg = ReLIFTConfig(n_rollouts=1, batch_prompts=4, buffer_size=2, sft_entropy_coef=0.0)
    >>> zero = jnp.zeros((1, 2))
    >>> theta, buf = relift_update(inst, zero, zero, relift_init(inst, zero, cfg), 1.0, cfg)
    >>> theta.tolist(), float(buf.sum())  # 2 items in, 2 taken: one SFT step on d − π
    ([[-0.5, 0.5]], 0.0)
  """
  _, pi_old = policy(inst, theta_old)
  buf = buffer_push(buf, relift_inflow(inst, pi_old, cfg))
  taken, buf, _ = buffer_take(buf, cfg.buffer_size, cfg.buffer_order)
  log_pi, pi = policy(inst, theta)
  share = taken / cfg.buffer_size
  sft = jnp.where(rl_support(inst), share[:, None] * relift_sft_direction(inst, pi, log_pi, cfg),
                  0.0)
  return theta + lr * cfg.sft_lr_ratio * sft, buf


RELIFT = Recipe("relift", ReLIFTConfig(), relift_field, relift_estimate,
                lambda cfg: cfg.n_rollouts,
                "Dr.GRPO RL (Σ over n) + buffer of all-failed prompts, SFT on the newest S items",
                step_field=relift_rl_field, init=relift_init, update=relift_update,
                prepare=fill_reward_levels)

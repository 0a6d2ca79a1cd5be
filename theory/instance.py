"""The tabular instance: prompts X, responses Y, data d, reference rho, reward r, beta.

An :class:`Instance` is a frozen dataclass registered as a JAX pytree, so batches of
instances (leading batch axis on every leaf) go through ``jax.vmap`` and ``jax.jit``
unchanged. Sizes are bucketed by padding:

- a padded prompt has weight 0 (it contributes nothing to any expectation over prompts);
- a padded response has ``response_mask`` False, zero data and zero reference.

``validate`` checks a concrete (unpadded or padded) instance and raises
:class:`InstanceError` with a one-line message naming the field and the rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Instance", "InstanceError", "Domain", "DOMAIN", "make_instance", "validate",
           "pad_instance",
           "unpad_instance", "stack", "index", "with_reference", "rl_stage_after_sft"]

WEIGHT_TOL = 1e-9  # weights and rows must sum to 1 within this (absolute).


@dataclasses.dataclass(frozen=True)
class Domain:
  """The valid domain: every quantity is finite and right (to its stated rounding bound) inside it.

  Attributes:
    beta_min, beta_max: the range of the KL coefficient β.
    reward_over_beta_max: the largest |r(x, y)| / β (the log-space exponents stay far from
      float64's range, and rounding of r/β stays below 1e-10 absolute).
  """

  beta_min: float = 1e-6
  beta_max: float = 1e6
  reward_over_beta_max: float = 1e6


DOMAIN = Domain()


class InstanceError(ValueError):
  """A rule of the instance format is broken; the message is one line naming the field."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Instance:
  """A finite SFT/RL problem over prompts X and responses Y.

  Attributes:
    prompt_weights: [X] w_x > 0 summing to 1 (padded prompts: 0).
    data: [X, Y] SFT targets d(y|x), rows sum to 1 (zeros allowed).
    reference: [X, Y] reference policy rho(y|x), positive wherever data is.
    reward: [X, Y] bounded reward r(x, y).
    beta: [] KL coefficient beta > 0.
    response_mask: [X, Y] bool, True on real responses (False only where padded).
  """

  prompt_weights: jax.Array
  data: jax.Array
  reference: jax.Array
  reward: jax.Array
  beta: jax.Array
  response_mask: jax.Array

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.data.shape[-2:])  # type: ignore[return-value]


def make_instance(prompt_weights, data, reward, beta, reference=None, response_mask=None,
                  dtype=None) -> Instance:
  """Builds an :class:`Instance` from array-likes (reference defaults to data).

  Args:
    prompt_weights: [X] prompt weights.
    data: [X, Y] data distribution.
    reward: [X, Y] reward.
    beta: scalar KL coefficient.
    reference: [X, Y] reference policy; ``None`` means the reference is the data.
    response_mask: [X, Y] bool; ``None`` means every response is real.
    dtype: float dtype (default: float64 when x64 is enabled, else float32).

  Returns:
    An unvalidated :class:`Instance` (call :func:`validate` on user input).

  Examples:
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> inst.shape, float(inst.beta), inst.reference.tolist()  # the reference defaults to the data
    ((1, 2), 1.0, [[0.5, 0.5]])
  """
  if dtype is None:
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  data = jnp.asarray(data, dtype)
  reference = data if reference is None else jnp.asarray(reference, dtype)
  if response_mask is None:
    response_mask = np.ones(np.shape(data), bool)  # NumPy: building an instance compiles nothing
  return Instance(
      prompt_weights=jnp.asarray(prompt_weights, dtype),
      data=data,
      reference=reference,
      reward=jnp.asarray(reward, dtype),
      beta=jnp.asarray(beta, dtype),
      response_mask=jnp.asarray(response_mask, bool),
  )


def _fmt(v: float) -> str:
  return f"{v:.10g}"


def validate(instance: Instance, tol: float = WEIGHT_TOL) -> Instance:
  """Checks every rule of the instance format on concrete values.

  Rules: beta finite and > 0 and inside :data:`DOMAIN`; all values finite; shapes consistent
  ([X], [X, Y] x 3, |Y| >= 2); max |r| / beta inside :data:`DOMAIN`; prompt weights positive and
  summing to 1; every row of data and reference non-negative and summing to 1; reference positive
  wherever data is positive.

  Args:
    instance: an unbatched, unpadded instance.
    tol: absolute tolerance on sums.

  Returns:
    The instance, unchanged.

  Raises:
    InstanceError: with a one-line message naming the field and the rule.

  Examples:
    >>> # valid: returned as is
    >>> inst = validate(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0))
    >>> try:
    ...   validate(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1e-7))
    ... except InstanceError as e:
    ...   print(e)
    beta is 1e-07, outside the valid domain [1e-06, 1e+06]
  """
  w = np.asarray(instance.prompt_weights, np.float64)
  d = np.asarray(instance.data, np.float64)
  rho = np.asarray(instance.reference, np.float64)
  r = np.asarray(instance.reward, np.float64)
  beta = np.asarray(instance.beta, np.float64)
  if beta.shape != ():
    raise InstanceError(f"beta must be a single number, got shape {list(beta.shape)}")
  if not np.isfinite(beta) or beta <= 0:
    raise InstanceError(f"beta is {_fmt(float(beta))}, expected a finite number > 0")
  if not DOMAIN.beta_min <= beta <= DOMAIN.beta_max:
    raise InstanceError(f"beta is {_fmt(float(beta))}, outside the valid domain "
                        f"[{DOMAIN.beta_min:g}, {DOMAIN.beta_max:g}]")
  if w.ndim != 1 or w.shape[0] < 1:
    raise InstanceError(f"prompt_weights must be a non-empty list, got shape {list(w.shape)}")
  n_x = w.shape[0]
  for name, a in (("data", d), ("reference", rho), ("reward", r)):
    if a.ndim != 2:
      raise InstanceError(f"{name} must be a list of rows (2-D), got {a.ndim}-D")
    if a.shape[0] != n_x:
      raise InstanceError(f"{name} has {a.shape[0]} rows, expected {n_x} (one per prompt weight)")
  n_y = d.shape[1]
  if n_y < 2:
    raise InstanceError(f"data rows have {n_y} entries, expected at least 2 responses")
  for name, a in (("reference", rho), ("reward", r)):
    if a.shape[1] != n_y:
      raise InstanceError(f"{name} rows have {a.shape[1]} entries, expected {n_y} (as data)")
  for name, a in (("prompt_weights", w), ("data", d), ("reference", rho), ("reward", r)):
    bad = np.argwhere(~np.isfinite(a))
    if bad.size:
      where = " ".join(str(int(i)) for i in bad[0])
      raise InstanceError(f"{name} entry {where} is {a[tuple(bad[0])]}, expected a finite number")
  r_scale = float(np.max(np.abs(r))) / float(beta)
  if r_scale > DOMAIN.reward_over_beta_max:
    i, j = (int(k) for k in np.unravel_index(np.argmax(np.abs(r)), r.shape))
    raise InstanceError(f"reward row {i} entry {j} is {_fmt(r[i, j])}: |r|/beta = {r_scale:.3g} "
                        f"is outside the valid domain (at most {DOMAIN.reward_over_beta_max:g})")
  if np.any(w <= 0):
    i = int(np.argmax(w <= 0))
    raise InstanceError(f"prompt_weights entry {i} is {_fmt(w[i])}, expected > 0")
  if abs(w.sum() - 1.0) > tol:
    raise InstanceError(f"prompt_weights sum to {_fmt(w.sum())}, expected 1")
  for name, a in (("data", d), ("reference", rho)):
    neg = np.argwhere(a < 0)
    if neg.size:
      i, j = (int(k) for k in neg[0])
      raise InstanceError(f"{name} row {i} entry {j} is {_fmt(a[i, j])}, expected >= 0")
    sums = a.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > tol)
    if off.size:
      raise InstanceError(f"{name} row {off[0]} sums to {_fmt(sums[off[0]])}, expected 1")
  bad = np.argwhere((d > 0) & (rho <= 0))
  if bad.size:
    i, j = (int(k) for k in bad[0])
    raise InstanceError(
        f"reference row {i} entry {j} is 0 where data is {_fmt(d[i, j])}, expected reference > 0 "
        "wherever data > 0")
  return instance


def pad_instance(instance: Instance, n_prompts: int, n_responses: int) -> Instance:
  """Pads an instance to [n_prompts, n_responses] (weight-0 prompts, masked responses).

  Padded prompts get a uniform data/reference row over the real responses so that every row
  is still a distribution; their weight is 0, so no expectation over prompts sees them.

  Examples:
    >>> inst = pad_instance(make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0), 2, 3)
    >>> # a weight-0 prompt, a masked response
    >>> inst.prompt_weights.tolist(), inst.response_mask.tolist()
    ([1.0, 0.0], [[True, True, False], [True, True, False]])
  """
  n_x, n_y = instance.shape
  if n_prompts < n_x or n_responses < n_y:
    raise ValueError(f"cannot pad {n_x}x{n_y} down to {n_prompts}x{n_responses}")
  dx, dy = n_prompts - n_x, n_responses - n_y

  def pad2(a, fill=0):
    return jnp.pad(a, ((0, dx), (0, dy)), constant_values=fill)

  real_y = (jnp.arange(n_responses) < n_y)[None, :]
  uniform = jnp.where(real_y, 1.0 / n_y, 0.0).astype(instance.data.dtype)
  row_pad = jnp.arange(n_prompts)[:, None] >= n_x
  data = jnp.where(row_pad, uniform, pad2(instance.data))
  reference = jnp.where(row_pad, uniform, pad2(instance.reference))
  mask = pad2(instance.response_mask, False) | (row_pad & real_y)
  return Instance(
      prompt_weights=jnp.pad(instance.prompt_weights, (0, dx)),
      data=data,
      reference=reference,
      reward=pad2(instance.reward),
      beta=instance.beta,
      response_mask=mask,
  )


def unpad_instance(instance: Instance) -> Instance:
  """Drops weight-0 prompts and responses masked out on every prompt (inverse of padding).

  Examples:
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> unpad_instance(pad_instance(inst, 2, 3)).shape
    (1, 2)
  """
  keep_x = np.asarray(instance.prompt_weights) > 0
  keep_y = np.asarray(instance.response_mask).any(axis=0)
  sel = lambda a: jnp.asarray(np.asarray(a)[keep_x][:, keep_y])
  return Instance(
      prompt_weights=jnp.asarray(np.asarray(instance.prompt_weights)[keep_x]),
      data=sel(instance.data),
      reference=sel(instance.reference),
      reward=sel(instance.reward),
      beta=instance.beta,
      response_mask=sel(instance.response_mask),
  )


def stack(instances: list[Instance]) -> Instance:
  """Stacks same-shape instances into one batched instance (leading axis).

  Examples:
    >>> a = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> b = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 2.0)
    >>> stack([a, b]).beta.tolist()  # one batched instance: [B] betas, [B, X, Y] arrays
    [1.0, 2.0]
  """
  return jax.tree.map(lambda *xs: jnp.stack(xs), *instances)


def index(batch: Instance, i: Any) -> Instance:
  """The i-th instance of a batch.

  Examples:
    >>> a = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> b = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 2.0)
    >>> float(index(stack([a, b]), 1).beta)
    2.0
  """
  return jax.tree.map(lambda a: a[i], batch)


def with_reference(instance: Instance, reference: jax.Array) -> Instance:
  """The instance with reference policy ``reference`` [X, Y] (e.g. the policy a phase starts from).

  Examples:
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0)
    >>> with_reference(inst, jnp.asarray([[0.2, 0.8]])).reference.tolist()
    [[0.2, 0.8]]
  """
  return dataclasses.replace(instance, reference=jnp.asarray(reference, instance.data.dtype))


def rl_stage_after_sft(instance: Instance) -> Instance:
  r"""The instance of the RL stage of SFT-then-RL: the reference is the exact SFT optimum, ρ = d.

  This is the setting of Theorem 3.1 (arXiv 2601.07389): exact SFT reaches π = d, then RL is
  regularised towards it.

  Examples:
    >>> inst = make_instance([1.0], [[0.5, 0.5]], [[0.0, 1.0]], 1.0, reference=[[0.9, 0.1]])
    >>> rl_stage_after_sft(inst).reference.tolist()
    [[0.5, 0.5]]
  """
  return dataclasses.replace(instance, reference=instance.data)

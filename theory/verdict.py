"""The value a statement returns: its two sides and a margin (>= 0 when it holds)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Verdict", "identity", "at_most", "at_least", "positive"]


class Verdict(NamedTuple):
  """Sides of a statement on one instance.

  Attributes:
    lhs: [] left-hand side.
    rhs: [] right-hand side.
    margin: [] how far the statement is from failing: >= 0 (or > 0 for strict statements) when
      it holds. Identities use minus the relative residual; ``lhs <= rhs`` uses ``rhs - lhs``.
    applies: [] bool, False where the statement's hypothesis does not hold on this instance
      (vacuous: not counted).
    ratio: [] for bounds, how much of the bound is used (1 = tight), e.g. C₁ / bound; NaN when
      not meaningful.
  """

  lhs: jax.Array
  rhs: jax.Array
  margin: jax.Array
  applies: jax.Array
  ratio: jax.Array


def _nan_like(x):
  return jnp.full(jnp.shape(x), jnp.nan, dtype=jnp.result_type(x, float))


def _ratio(used, budget):
  """used / budget where the budget is positive, else NaN."""
  ok = budget > 1e-10  # below this both sides are rounding noise
  return jnp.where(ok, used / jnp.where(ok, budget, 1.0), jnp.nan)


def identity(lhs, rhs, applies=True) -> Verdict:
  """lhs = rhs; margin = −|lhs − rhs| / max(1, |lhs|, |rhs|) (relative residual)."""
  scale = jnp.maximum(1.0, jnp.maximum(jnp.abs(lhs), jnp.abs(rhs)))
  resid = jnp.where(lhs == rhs, 0.0, jnp.abs(lhs - rhs))  # inf == inf is exact agreement
  return Verdict(lhs, rhs, -resid / scale, jnp.asarray(applies), _nan_like(lhs))


def at_most(lhs, rhs, applies=True, base=0.0) -> Verdict:
  """lhs <= rhs; margin = rhs − lhs; ratio = (lhs − base)/(rhs − base) (the bound's use)."""
  return Verdict(lhs, rhs, rhs - lhs, jnp.asarray(applies), _ratio(lhs - base, rhs - base))


def at_least(lhs, rhs, applies=True, base=0.0) -> Verdict:
  """lhs >= rhs; margin = lhs − rhs; ratio = (rhs − base)/(lhs − base)."""
  return Verdict(lhs, rhs, lhs - rhs, jnp.asarray(applies), _ratio(rhs - base, lhs - base))


def positive(value, applies=True) -> Verdict:
  """value > 0 (a strict statement); margin = value."""
  return Verdict(value, jnp.zeros_like(value), value, jnp.asarray(applies), _nan_like(value))

"""The atomic case is the depth-1 tree: the tree engine equals the atomic engine (parts A–B).

Two directions: (1) an atomic instance as a depth-1 tree, where every G-engine number (L, J, J_β,
KL, C₁, log Z, the Gibbs tilt, and the G4 fixed points, against scipy at depth 1) equals the atomic
engine's, and the round trip back is exact; (2) any tree's leaf set as an atomic instance, where the
level recursions equal the atomic engine's sums over sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from conftest import assert_close
from helpers import instance_of, with_probe
from hypothesis import given, settings, strategies as st

from nondecoupling.theory import objectives as atomic
from nondecoupling.theory.tree import bellman, fixed_points, objectives as obj, policy
from nondecoupling.theory.tree.atomic import (
  atomic_policy_as_tree,
  leaf_instance,
  leaf_policy,
  policy_from_leaves,
  tree_from_atomic,
)
from nondecoupling.theory.tree.build import PromptTree, build_tree
from nondecoupling.verify.tree_families import SMALL_BUCKET
from nondecoupling.verify.tree_io import tree_from_dict
from nondecoupling.verify.tree_strategies import tree_strategy


def _tree_side(inst, theta):
  tree = tree_from_atomic(inst)
  lp = atomic_policy_as_tree(atomic.policy_log_probs(inst, theta))
  return {
      "L": obj.sft_loss(tree, lp), "J": obj.reward(tree, lp),
      "J_beta": obj.regularized_reward(tree, lp), "KL": obj.expect(tree, obj.kl(tree, lp)),
      "excess": obj.sft_excess(tree, lp), "c1": bellman.c1(tree),
      "log_z": bellman.log_partition(tree), "tilt": bellman.optimal_policy(tree)[0][:, 0, :],
      "k2": fixed_points.closed_form_fixed_point(tree, "k2_loss")[0][:, 0, :],
      "k3": fixed_points.closed_form_fixed_point(tree, "k3_loss")[0][:, 0, :],
      "back": leaf_instance(tree),
  }


def _atomic_side(inst, theta):
  lp = atomic.policy_log_probs(inst, theta)
  return {
      "L": atomic.sft_loss(inst, lp), "J": atomic.reward(inst, lp),
      "J_beta": atomic.regularized_reward(inst, lp),
      "KL": atomic.expect(inst, atomic.kl_rows(lp, atomic.safe_log(inst.reference))),
      "excess": atomic.sft_excess(inst, lp), "c1": atomic.c1(inst),
      "log_z": atomic.log_partition(inst), "tilt": atomic.gibbs_tilt(inst),
  }


TREE_SIDE = jax.jit(_tree_side)
ATOMIC_SIDE = jax.jit(_atomic_side)


def _theta(inst, theta):
  full = np.zeros(inst.shape)
  full[: theta.shape[0], : theta.shape[1]] = theta
  return jnp.asarray(full)


def _k3_by_scipy(rho, r, beta):
  """π_i = βρ_i/(β + J − r_i) at depth 1: V = J solves Σ βρ/(β + V − r) = 1 (scipy brentq)."""
  top = r.max()
  f = lambda v: np.sum(beta * rho / (beta + v - r)) - 1.0
  v = scipy.optimize.brentq(f, top - beta + 0.5 * beta * rho[r == top].sum(), top + beta,
                            xtol=1e-15, rtol=4 * np.finfo(float).eps)
  return beta * rho / (beta + v - r)


@given(with_probe())
def test_depth_one_tree_equals_atomic_engine(example):
  raw, theta = example
  inst = instance_of(raw)
  th = _theta(inst, theta)
  tree, ref = TREE_SIDE(inst, th), ATOMIC_SIDE(inst, th)
  for key in ("L", "J", "J_beta", "KL", "excess", "c1"):
    assert_close(tree[key], ref[key], err_msg=key)
  real = np.asarray(inst.prompt_weights) > 0
  assert_close(np.asarray(tree["log_z"])[real], np.asarray(ref["log_z"])[real])
  support = np.asarray(atomic.rl_support(inst)) & real[:, None]
  assert_close(np.exp(np.asarray(tree["tilt"]))[support], np.exp(np.asarray(ref["tilt"]))[support])
  assert_close(np.exp(np.asarray(tree["k2"]))[support], np.exp(np.asarray(ref["tilt"]))[support])
  back = tree["back"]
  for name in ("data", "reference", "reward"):
    a, b = np.asarray(getattr(back, name)), np.asarray(getattr(inst, name))
    assert_close(np.where(support, a, 0.0), np.where(support, b, 0.0), err_msg=name)
  assert np.array_equal(np.asarray(back.response_mask), np.asarray(atomic.rl_support(inst)))
  for x in np.flatnonzero(real):
    s = support[x]
    want = _k3_by_scipy(np.asarray(inst.reference)[x][s], np.asarray(inst.reward)[x][s],
                        float(inst.beta))
    assert_close(np.exp(np.asarray(tree["k3"]))[x][s], want)


def _leaf_side(tree, theta):
  lp = policy.policy_log_probs(tree, theta)
  inst = leaf_instance(tree)
  leaves = leaf_policy(tree, lp)
  return {
      "tree": (obj.sft_loss(tree, lp), obj.reward(tree, lp), obj.regularized_reward(tree, lp),
               obj.kl(tree, lp), obj.sft_excess(tree, lp), bellman.c1(tree),
               bellman.log_partition(tree)),
      "atomic": (atomic.sft_loss(inst, leaves), atomic.reward(inst, leaves),
                 atomic.regularized_reward(inst, leaves),
                 atomic.kl_rows(leaves, atomic.safe_log(inst.reference)),
                 atomic.sft_excess(inst, leaves), atomic.c1(inst), atomic.log_partition(inst)),
      "round_trip": leaf_policy(tree, policy_from_leaves(tree, leaves)),
      "leaves": leaves,
  }


LEAF_SIDE = jax.jit(_leaf_side)


@given(tree_strategy(), st.integers(0, 2**32 - 1))
def test_leaf_set_of_any_tree_equals_atomic_engine(raw, seed):
  """L, J, J_β, KL (chain rule), SFT excess, C₁, log Z of a tree = the atomic engine's on leaves;
  a leaf distribution converted to node conditionals has the same leaf distribution."""
  tree = tree_from_dict(raw, SMALL_BUCKET).tree
  rng = np.random.default_rng(seed)
  theta = tuple(jnp.asarray(rng.normal(0.0, 2.0, lv.reference.shape)) for lv in tree.levels)
  out = LEAF_SIDE(tree, theta)
  names = ("L", "J", "J_beta", "KL", "excess", "c1", "log_z")
  real = np.asarray(tree.prompt_weights) > 0
  for name, a, b in zip(names, out["tree"], out["atomic"]):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim:
      a, b = a[real], b[real]
    assert_close(a, b, err_msg=name)
  mask = np.asarray(policy.leaf_mask(tree)) & real[:, None]
  assert_close(np.exp(np.asarray(out["round_trip"]))[mask], np.exp(np.asarray(out["leaves"]))[mask])


def _both_leaf_instances(tree):
  full, sup = leaf_instance(tree), leaf_instance(tree, support_only=True)
  return full, sup, atomic.rl_support(full), atomic.rl_support(sup)


BOTH_LEAF_INSTANCES = jax.jit(_both_leaf_instances)


@settings(max_examples=25)
@given(tree_strategy())
def test_support_only_leaf_instance_keeps_every_leaf_and_the_rl_support(raw):
  """The group recipes' leaf instance (reference = 1{ρ(y) > 0}) has the same RL support, data,
  rewards and mask as the one with ρ(y): every leaf is reachable on a tree."""
  tree = tree_from_dict(raw, SMALL_BUCKET).tree
  full, sup, full_support, sup_support = BOTH_LEAF_INSTANCES(tree)
  assert np.array_equal(np.asarray(full_support), np.asarray(sup_support))
  assert np.array_equal(np.asarray(sup_support), np.asarray(policy.leaf_mask(tree)))
  for field in ("data", "reward", "response_mask", "prompt_weights"):
    assert np.array_equal(np.asarray(getattr(full, field)), np.asarray(getattr(sup, field)))


def test_support_only_leaf_instance_counts_a_leaf_whose_probability_underflows():
  """ρ(1 1) = 1e-200 · 1e-200 underflows float64 to 0, so the leaf drops out of the support
  computed from ρ(y); the support-only instance keeps it (ρ(a|s) > 0 on the path)."""
  tiny = 1e-200
  p = PromptTree(2, 0, 2, {(): [1.0 - tiny, tiny], (1,): [1.0 - tiny, tiny]}, {(0,): 1.0},
                 lambda y: float(y == (1, 1)))
  tree, _ = build_tree([p], [1.0], 1.0)
  full, sup = leaf_instance(tree), leaf_instance(tree, support_only=True)
  assert atomic.rl_support(sup).tolist() == [[True, False, True, True]]
  assert atomic.rl_support(full).tolist() == [[True, False, True, False]]

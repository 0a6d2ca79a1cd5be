"""Sharding over local devices: 4 host devices (conftest sets XLA_FLAGS) give the same margins
as one device, and the verify sweep uses every device."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import assert_close
from jax.sharding import Mesh

from nondecoupling.verify.families import sample_family
from nondecoupling.verify.registry import STATEMENTS
from nondecoupling.verify.statement import holds_mask
from nondecoupling.verify.sweep import evaluate_batch, instance_mesh, shard_batch


def test_four_host_devices_are_available():
  assert jax.device_count() == 4, "conftest sets --xla_force_host_platform_device_count=4"


def test_sharded_margins_equal_single_device_margins():
  inst, probe = sample_family("reference", 203, seed=11)  # not a multiple of 4: padding path
  one = Mesh(np.array(jax.devices()[:1]), ("instances",))
  chosen = {"B2 gibbs_variational", "B5 gradients_closed_form", "C1 theorem_3_1",
            "C3 theorem_4_1_as_printed", "D1 critical_beta_root", "D3 joint_bound"}
  for stmt in [s for s in STATEMENTS if s.name in chosen]:
    sharded = evaluate_batch(stmt.fn, inst, probe, instance_mesh())
    single = evaluate_batch(stmt.fn, inst, probe, one)
    # Same values up to each margin's rounding bound (XLA vectorises a 51-row shard and a 204-row
    # batch differently), and the same verdict on every instance.
    for a, b in zip(sharded[:2], single[:2]):  # lhs, rhs
      assert_close(a, b, err_msg=stmt.name)
    np.testing.assert_array_equal(np.asarray(sharded.applies), np.asarray(single.applies))
    a = np.asarray(sharded.applies)
    slack = np.asarray(sharded.slack)[a]
    assert np.all(np.abs(np.asarray(sharded.margin) - np.asarray(single.margin))[a] <= 2 * slack)
    np.testing.assert_array_equal(holds_mask(stmt, sharded.margin, sharded.slack),
                                  holds_mask(stmt, single.margin, single.slack))
    assert np.asarray(sharded.margin).shape == (203,)


def test_batches_are_split_over_every_device():
  inst, probe = sample_family("dense", 16, seed=0)
  (placed, _), n = shard_batch((inst, probe))
  assert n == 16
  assert len(placed.data.sharding.device_set) == 4
  assert placed.data.addressable_shards[0].data.shape[0] == 4


def test_padding_a_batch_to_a_common_size_changes_no_verdict():
  """`verify` evaluates every family's batch at the largest batch's size: the padded rows are
  dropped and the real rows' verdicts are those of the unpadded evaluation (the table's
  tolerance: another batch size may vectorise the rows differently)."""
  inst, probe = sample_family("dense", 3, seed=2)
  for stmt in [s for s in STATEMENTS if s.fn is not None][:4]:
    plain = evaluate_batch(stmt.fn, inst, probe)
    padded = evaluate_batch(stmt.fn, inst, probe, size=8)
    assert padded.margin.shape == (3,)
    for a, b in zip(plain, padded):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
      assert_close(np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0))


@pytest.mark.parametrize("n, minimum, size", [(1, 1, 1), (3, 1, 4), (4, 1, 4), (5, 4, 8),
                                              (2, 4, 4), (16, 4, 16), (17, 1, 32)])
def test_padded_batch_repeats_rows_to_a_power_of_two(n, minimum, size):
  from nondecoupling.verify.tree_checks import padded_batch
  rows = (np.arange(n, dtype=np.float64), np.arange(n)[:, None] * np.ones((1, 3)))
  (a, b), count = padded_batch(rows, minimum)
  assert count == n and a.shape == (size,) and b.shape == (size, 3)
  np.testing.assert_array_equal(a, np.arange(size) % n)
  np.testing.assert_array_equal(b[:, 0], np.arange(size) % n)


def test_flow_checks_split_over_the_devices_equal_one_plain_program():
  """D5 decay and D7 run their flows as one program per device on its shard (shard_map): each
  instance keeps its own key (split from the batch's key, as on one device), the padding rows
  (7 instances over 4 devices) are dropped, and the verdicts are those of one plain jit(vmap)."""
  from nondecoupling.verify import flow_checks as fc
  inst, _ = sample_family("dense", 7, seed=3)
  key = jax.random.PRNGKey(5)
  keys = jax.random.split(key, 7)
  checks = [(fc.check_decay_rl, lambda b, k: fc._decay_batch(b, k, "rl"), 0),
            (fc.check_d7_pl_time, fc._d7_batch, 0), (fc.check_d7_argmax, fc._d7_batch, 1)]
  for check, batch_fn, part in checks:
    sharded = check(inst, key)
    plain = jax.jit(batch_fn)(inst, keys)
    plain = plain[part] if isinstance(plain, tuple) and not hasattr(plain, "margin") else plain
    assert np.asarray(sharded.margin).shape == (7,)
    np.testing.assert_array_equal(np.asarray(sharded.applies), np.asarray(plain.applies))
    for a, b in zip(sharded, plain):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
      assert_close(np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0),
                   err_msg=check.__name__)


@pytest.mark.parametrize("flags, version, added", [
    ("--xla_force_host_platform_device_count=4", "0.10.2", True),
    ("", "0.10.0", True),
    ("--xla_cpu_experimental_ynn_fusion_type=dot", "0.10.2", False),  # the user's choice stays
    ("", "0.11.0", False),  # a jaxlib the flag was not measured on: XLA could abort on it
    ("", None, False),      # no jaxlib metadata
])
def test_fuse_row_reductions_adds_its_flag_only_where_it_is_known(monkeypatch, flags, version,
                                                                  added):
  import importlib.metadata

  from nondecoupling.verify import devices

  def fake_version(name):
    assert name == "jaxlib"
    if version is None:
      raise importlib.metadata.PackageNotFoundError(name)
    return version

  monkeypatch.setenv("XLA_FLAGS", flags)
  monkeypatch.setattr(devices.importlib.metadata, "version", fake_version)
  devices.fuse_row_reductions()
  want = f"{flags} {devices.FUSED_REDUCTIONS_FLAG}".strip() if added else flags
  assert devices.os.environ["XLA_FLAGS"] == want

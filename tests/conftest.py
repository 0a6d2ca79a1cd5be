"""Test configuration: strict JAX in float64, one tolerance table, a deterministic Hypothesis.

- x64 everywhere (the theory is float64); strict dtype promotion and rank promotion errors, as
  diffrax/equinox do, so silent float32 or broadcasting bugs fail loudly.
- Hypothesis: no example database, derandomised, no deadline (jit compile times vary).
- ``TOL``: the single dtype-keyed tolerance table (neural-tangents style); use ``assert_close``.
- One persistent compilation cache per test run, shared with xdist workers and CLI subprocesses.
- XLA compiles at backend optimisation level 0, fusions by the elemental emitter (below): the
  suite is compile-bound.
"""

from __future__ import annotations

import os

# 4 host devices let sharding tests run in-process; set before jax is imported. XLA's backend
# optimisation level 0 (LLVM without its optimisation passes; the same floating-point semantics,
# no fast-math at any level): most of the suite's time is compiling small programs, not running
# them (2 workers on a quiet 2-core machine: pytest 19:00 → 16:16 min, CPU 31% less per cold
# `verify` program set; a warm `verify --instances 16` runs 30 → 40 s). XLA:CPU's fusions emitted
# by its older elemental LLVM emitter instead of the MLIR fusion emitters (the same arithmetic;
# no pass pipeline per fusion): a fixed ~30 ms less per program, which the many small programs
# feel (4 December: 120 one-op eager programs 5.6 → 3.2 s, three modules' doctests 40 → 26 s, a
# cold `verify --instances 16` 208 → 164–168 s, the same warm one 32.5 → 32.7 s).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                                   "--xla_backend_optimization_level=0 "
                                   "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Reductions fused with their loops, as `verify` runs them (verify.devices.fuse_row_reductions).
from nondecoupling.verify.devices import fuse_row_reductions  # noqa: E402

fuse_row_reductions()

import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.internal.conjecture import providers  # noqa: E402

from nondecoupling.verify.compile_cache import CACHE_ENV, enable_compile_cache  # noqa: E402

# One compilation cache for the whole run: this process, its xdist workers (they inherit the
# variable, set before they start) and every CLI subprocess a test starts. A fresh directory per
# run, removed at the end, so a fresh clone's timings include every first compile.
_OWN_CACHE = CACHE_ENV not in os.environ
if _OWN_CACHE:
  os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="nondecoupling-test-cache-")
enable_compile_cache()


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(os.environ[CACHE_ENV], ignore_errors=True)


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "standard")

# Hypothesis (≥ 6.131) mixes constants read from the loaded local modules into its draws; which
# modules a worker has loaded depends on the test order, so the examples of a derandomised test
# would differ between machines and runs. Off: every run draws the same examples.
providers.HypothesisProvider._local_constants = property(lambda self: providers.Constants())

settings.register_profile(
    "deterministic",
    database=None,
    derandomize=True,
    deadline=None,
    max_examples=60,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# One tolerance table, keyed by dtype: (rtol, atol).
TOL = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype("bfloat16") if hasattr(np, "bfloat16") else "bfloat16": (2e-2, 2e-2),
}
# Comparisons against numerical integration or finite differences (truncation error, not rounding).
TOL_NUMERICAL = (1e-5, 1e-7)
# Comparisons against a high-precision reference (tests/mp_reference.py), relative to the
# quantity's condition scale (the magnitude of its non-cancelling parts), keyed by dtype.
TOL_CONDITIONED = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-4}


def assert_conditioned(actual, desired, scale, err_msg="", resolution=0.0):
  """|actual − desired| ≤ TOL_CONDITIONED[dtype] × scale + resolution, and actual finite.

  ``scale`` is the condition scale of the quantity (its value for a sum of non-negative terms);
  ``resolution`` the reference's own absolute error (a high-precision reference's last digits).
  """
  a = np.asarray(actual)
  assert np.all(np.isfinite(a)), f"{err_msg}: not finite: {a}"
  bound = TOL_CONDITIONED[a.dtype if a.dtype in TOL_CONDITIONED else np.dtype(np.float64)] * float(
      scale) + float(resolution)
  err = abs(float(a) - float(desired))
  assert err <= bound, f"{err_msg}: |{float(a)!r} − {float(desired)!r}| = {err:.3g} > {bound:.3g}"


def tol_for(*arrays) -> tuple[float, float]:
  """The loosest (rtol, atol) over the dtypes of the arrays compared."""
  import ml_dtypes
  rt, at = 0.0, 0.0
  for a in arrays:
    dt = np.asarray(a).dtype
    key = "bfloat16" if dt == ml_dtypes.bfloat16 else dt
    r, t = TOL.get(key, TOL[np.dtype(np.float32)])
    rt, at = max(rt, r), max(at, t)
  return rt, at


def assert_close(actual, desired, rtol=None, atol=None, err_msg=""):
  """np.testing.assert_allclose with the table's tolerance unless given; also checks finiteness."""
  a, d = np.asarray(actual), np.asarray(desired)
  r, t = tol_for(a, d)
  np.testing.assert_allclose(a, d, rtol=r if rtol is None else rtol,
                             atol=t if atol is None else atol, err_msg=err_msg)


@pytest.fixture
def getkey():
  """Fresh PRNG keys, deterministic per test."""
  key = [jax.random.PRNGKey(0)]

  def _next():
    key[0], sub = jax.random.split(key[0])
    return sub
  return _next

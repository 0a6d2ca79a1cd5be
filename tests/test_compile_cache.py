"""The on-disk caches: JAX's persistent cache and whole stored programs (verify/stored_programs).

A stored program must give what a fresh ``jax.jit`` gives, load without tracing in a later
process, survive a damaged file, and never fail a command when the directory is unusable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nondecoupling.verify import stored_programs
from nondecoupling.verify.compile_cache import CACHE_ENV, default_cache_dir, enable_compile_cache
from nondecoupling.verify.exported_programs import exported_jit
from nondecoupling.verify.stored_programs import stored_jit
from nondecoupling.verify.sweep import shard_batch

INSTANCE = {"beta": 0.7, "prompt_weights": [0.25, 0.75],
            "data": [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],
            "reward": [[1.0, 0.0, -1.0], [0.5, -0.5, 0.2]],
            "reference": [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]}


def _logsumexp_rows(x):
  return {"lse": jnp.log(jnp.sum(jnp.exp(x), axis=-1)), "max": jnp.max(x)}


@pytest.fixture
def program_dir(tmp_path, monkeypatch):
  before = stored_programs.program_dir()
  stored_programs.set_program_dir(tmp_path / "programs")
  # As in a process that has not loaded anything from XLA's cache (this worker has), and does not
  # during the test: a small eager program that another process of the run (the other worker, an
  # example script) has put in the run's XLA cache would be a hit, after which nothing is stored.
  monkeypatch.setattr(stored_programs, "_XLA_CACHE_HITS", [0])
  xla_cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield tmp_path / "programs"
  jax.config.update("jax_enable_compilation_cache", xla_cache)
  stored_programs.set_program_dir(before)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
  assert default_cache_dir() == tmp_path / "mine"
  monkeypatch.delenv(CACHE_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert default_cache_dir() == tmp_path / "xdg" / "nondecoupling" / "jax"
  monkeypatch.setenv("XDG_CACHE_HOME", "")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert default_cache_dir() == tmp_path / "home" / ".cache" / "nondecoupling" / "jax"


def test_an_unusable_directory_turns_the_cache_off_with_one_warning(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert enable_compile_cache(blocker / "cache") is None
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("warning: compilation cache off: ")


def test_a_stored_program_loads_without_tracing_and_agrees_with_numpy(program_dir):
  x = np.linspace(-3.0, 2.0, 12).reshape(3, 4)
  traces = []

  def counted(a):
    traces.append(1)
    return _logsumexp_rows(a)

  fresh = stored_jit.__wrapped__  # a new wrapper each time, as in a new process
  first = fresh(counted, "test.lse")(jnp.asarray(x))
  assert len(traces) == 1 and len(list(program_dir.glob("*.bin"))) == 1
  # A new wrapper with the same name stands for a later process: it loads, it does not trace.
  again = fresh(counted, "test.lse")(jnp.asarray(x))
  assert len(traces) == 1
  expected = np.log(np.exp(x).sum(axis=-1))
  for got in (first, again):
    np.testing.assert_array_equal(np.asarray(got["lse"]), np.asarray(first["lse"]))
    np.testing.assert_allclose(np.asarray(got["lse"]), expected, rtol=1e-14)
    assert float(got["max"]) == x.max()
  # Another shape is another program.
  fresh(counted, "test.lse")(jnp.asarray(x[:2]))
  assert len(traces) == 2 and len(list(program_dir.glob("*.bin"))) == 2


def test_an_exported_program_over_every_device_loads_without_tracing(program_dir, monkeypatch):
  """verify's batched programs (sharded over the suite's 4 CPU devices) are kept lowered: a later
  process (a new wrapper) reads the module and never traces or exports the function again."""
  assert len(jax.devices()) > 1
  x = np.linspace(-3.0, 2.0, 24).reshape(8, 3)
  (placed,), _ = shard_batch((x,))
  traces = []

  def counted(a):
    traces.append(1)
    return _logsumexp_rows(a)

  first = exported_jit.__wrapped__(counted, "test.exported")(placed)
  assert len(traces) == 1 and len(list(program_dir.glob("*.exported"))) == 1
  monkeypatch.setattr(jax.export, "export", lambda *a, **k: pytest.fail("exported again"))
  again = exported_jit.__wrapped__(counted, "test.exported")(placed)
  assert len(traces) == 1, "the exported program was not read"
  expected = np.log(np.exp(x).sum(axis=-1))
  for got in (first, again):
    assert set(got) == {"lse", "max"}
    np.testing.assert_allclose(np.asarray(got["lse"]), expected, rtol=1e-14)
    assert float(got["max"]) == x.max()
  assert again["lse"].sharding.is_equivalent_to(placed.sharding, 1)


def test_a_run_bound_program_is_compiled_at_full_optimisation_exported_and_read(program_dir,
                                                                             monkeypatch):
  """``optimise=True`` (the flows' programs) asks XLA for its full optimisation whatever the
  suite's XLA_FLAGS (level 0) say, on the first call (exported) and in a later process (read), and
  gives the numbers of a plain jit."""
  real_jit, asked = jax.jit, []

  def spy(fn, *args, **kwargs):
    asked.append((getattr(fn, "__name__", ""), kwargs.get("compiler_options")))
    return real_jit(fn, *args, **kwargs)

  monkeypatch.setattr(jax, "jit", spy)
  x = jnp.asarray(np.linspace(-3.0, 2.0, 12).reshape(3, 4))
  first = exported_jit.__wrapped__(_logsumexp_rows, "test.optimised", True)(x)
  written = list(asked)
  again = exported_jit.__wrapped__(_logsumexp_rows, "test.optimised", True)(x)
  read = asked[len(written):]
  plain = exported_jit.__wrapped__(_logsumexp_rows, "test.plain")(x)
  assert "xla_backend_optimization_level=0" in os.environ["XLA_FLAGS"]
  full = {"xla_backend_optimization_level": 3}
  # the wrapper's own jit, export's tracing jit (lowering only: never compiled), the exported
  # program's jit; in the later process the first and the last
  assert written == [("_logsumexp_rows", full), ("flat", None), ("call", full)], written
  assert read == [("_logsumexp_rows", full), ("call", full)], read
  assert all(options is None for _, options in asked[len(written) + len(read):])
  assert len(list(program_dir.glob("*.exported"))) == 2
  for got in (first, again):
    np.testing.assert_array_equal(np.asarray(got["lse"]), np.asarray(plain["lse"]))


def test_without_a_program_folder_nothing_is_exported(tmp_path):
  before = stored_programs.program_dir()
  stored_programs.set_program_dir(None)
  try:
    out = exported_jit.__wrapped__(_logsumexp_rows, "test.exported_off")(jnp.arange(3.0))
  finally:
    stored_programs.set_program_dir(before)
  np.testing.assert_allclose(float(out["lse"]), np.log(np.exp(np.arange(3.0)).sum()), rtol=1e-14)
  assert not list(tmp_path.rglob("*.exported"))


def test_a_program_for_one_of_several_devices_loads_for_that_device(program_dir):
  # The suite runs with 4 CPU devices; JAX's loader would otherwise expect 4 shards per argument.
  assert len(jax.devices()) > 1
  x = jax.device_put(jnp.asarray(np.arange(6.0).reshape(2, 3)), jax.devices()[-1])
  traces = []

  def counted(a):
    traces.append(1)
    return _logsumexp_rows(a)

  first = stored_jit.__wrapped__(counted, "test.device")(x)
  again = stored_jit.__wrapped__(counted, "test.device")(x)
  assert len(traces) == 1, "the stored program was not loaded"
  assert again["lse"].devices() == {jax.devices()[-1]}
  np.testing.assert_array_equal(np.asarray(again["lse"]), np.asarray(first["lse"]))


def test_only_this_packages_module_level_functions_are_stored_by_default(program_dir):
  x = jnp.asarray(np.arange(4.0))
  stored_jit(lambda a: jnp.sum(a))(x)
  stored_jit(_logsumexp_rows)(x)  # defined in the tests: its code is not in the key
  assert not list(program_dir.glob("*.bin"))


@pytest.mark.parametrize("keep, pattern", [(stored_jit, "*.bin"), (exported_jit, "*.exported")])
def test_a_damaged_program_is_made_again(program_dir, keep, pattern):
  """A damaged whole executable is compiled again, a damaged exported module exported again."""
  x = jnp.asarray(np.arange(6.0).reshape(2, 3))
  keep.__wrapped__(_logsumexp_rows, "test.damaged")(x)
  (path,) = program_dir.glob(pattern)
  path.write_bytes(b"garbage")
  out = keep.__wrapped__(_logsumexp_rows, "test.damaged")(x)
  np.testing.assert_allclose(np.asarray(out["lse"]),
                             np.log(np.exp(np.arange(6.0).reshape(2, 3)).sum(-1)), rtol=1e-14)
  assert path.read_bytes() != b"garbage"


def test_nothing_is_stored_after_a_hit_in_xlas_cache(program_dir):
  # A program compiled after an XLA-cache hit serialises incompletely on CPU (the next process
  # fails to run it): it runs, but it is not stored.
  x = jnp.asarray(np.arange(6.0).reshape(2, 3))
  assert stored_programs.storing_is_safe()
  jax.monitoring.record_event("/jax/compilation_cache/cache_hits")
  assert not stored_programs.storing_is_safe()
  out = stored_jit.__wrapped__(_logsumexp_rows, "test.after_hit")(x)
  np.testing.assert_allclose(np.asarray(out["lse"]),
                             np.log(np.exp(np.arange(6.0).reshape(2, 3)).sum(-1)), rtol=1e-14)
  assert not list(program_dir.glob("*.bin"))


def _check(tmp_path, cache, *flags, command=("check",)):
  env = dict(os.environ, **{CACHE_ENV: str(cache)})
  flags, options = [f for f in flags if f == "--no-cache"], [f for f in flags if f != "--no-cache"]
  proc = subprocess.run([sys.executable, "-m", "nondecoupling.verify.cli", *flags, *command,
                         str(tmp_path / "inst.json"), *options, "--json"],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  out.pop("provenance")
  return out, proc.stderr


def test_check_gives_the_same_numbers_cold_warm_and_without_cache(tmp_path):
  (tmp_path / "inst.json").write_text(json.dumps(INSTANCE))
  cache = tmp_path / "cache"
  cold, _ = _check(tmp_path, cache)
  stored = {p.name: p.stat().st_mtime_ns for p in (cache / "programs").glob("*.bin")}
  assert len(stored) == 2, "the quantities and the statements are not both stored"
  # Nothing else is compiled before them (an XLA-cache hit would keep them from being stored).
  assert not list((cache / "xla").glob("*")), "check compiled a program outside the stored ones"
  warm, _ = _check(tmp_path, cache)
  # The warm run loaded both programs: none was compiled and stored again.
  assert {p.name: p.stat().st_mtime_ns for p in (cache / "programs").glob("*.bin")} == stored
  # --no-cache never touches the directory: an unusable one gives no warning.
  blocker = tmp_path / "file"
  blocker.write_text("")
  plain, err = _check(tmp_path, blocker / "cache", "--no-cache")
  assert "warning" not in err
  assert cold == warm == plain
  assert cold["instance"] == {"prompts": 2, "responses": 3, "beta": 0.7}


def test_flow_is_stored_whole_and_gives_the_same_trajectory_warm(tmp_path):
  (tmp_path / "inst.json").write_text(json.dumps(INSTANCE))
  cache = tmp_path / "cache"
  flow = ("flow",)
  cold, _ = _check(tmp_path, cache, "--pipeline", "rl_then_sft", "--points", "3", command=flow)
  stored = {p.name: p.stat().st_mtime_ns for p in (cache / "programs").glob("*.bin")}
  assert len(stored) == 1, "the flow program was not stored"
  assert not list((cache / "xla").glob("*")), "flow compiled a program outside the stored one"
  warm, _ = _check(tmp_path, cache, "--pipeline", "rl_then_sft", "--points", "3", command=flow)
  assert {p.name: p.stat().st_mtime_ns for p in (cache / "programs").glob("*.bin")} == stored
  plain, _ = _check(tmp_path, cache, "--no-cache", "--pipeline", "rl_then_sft", "--points", "3",
                    command=flow)
  assert cold == warm == plain
  assert cold["converged"] and len(cold["points"]) == 1 + 2 * 3


# Our functions that `compare` (both kinds of file) and `check` on a tree file used to trace in
# every process; a warm process must trace none of them.
_PROGRAMS = ("_quantities", "_all_tree_verdicts", "leaf_values", "_path_values", "_trained_leaf",
             "_fixed_point_leaf", "_leaf_data", "_leaf_token_mean", "_leaf_sft_then_rl",
             "_row_values", "_sft_then_rl", "_trained_policy", "flow_trajectory", "_path",
             "_train", "<lambda>")


def _traced(stderr: str) -> list[str]:
  """Names of the functions JAX traced (``JAX_LOG_COMPILES``'s "Finished tracing" lines)."""
  return re.findall(r"Finished tracing (\S+) for", stderr)


@pytest.mark.parametrize("command, file", [
    (("check",), "tree_table.json"), (("compare",), "tree_table.json"),
    (("compare",), "instances/readme_instance.json")])
def test_a_warm_compare_or_tree_check_traces_none_of_its_programs(tmp_path, monkeypatch,
                                                                   command, file):
  """Every program of these commands is kept as a lowered module: the second process reads
  them (one ``call`` per program exported by the first) and traces none of our functions."""
  examples = Path(__file__).resolve().parent.parent / "examples"
  (tmp_path / "inst.json").write_bytes((examples / file).read_bytes())
  monkeypatch.setenv("JAX_LOG_COMPILES", "1")
  cache = tmp_path / "cache"
  cold, cold_err = _check(tmp_path, cache, command=command)
  warm, warm_err = _check(tmp_path, cache, command=command)
  exported = _traced(cold_err).count("flat")
  assert exported > 0
  traced = _traced(warm_err)
  assert "flat" not in traced and traced.count("call") == exported, traced
  assert not set(traced) & set(_PROGRAMS), traced
  strip = lambda o: ({k: strip(v) for k, v in o.items() if k != "seconds"} if isinstance(o, dict)
                     else [strip(v) for v in o] if isinstance(o, list) else o)
  assert strip(cold) == strip(warm)

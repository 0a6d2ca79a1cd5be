"""Shared-parameter linear-head policies (theory/parametric.py) and the gold-label experiment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_close

from nondecoupling.theory import gold_task, objectives as obj, parametric as pm
from nondecoupling.theory.instance import make_instance


def _instance(seed=0, nx=5, ny=3):
  rng = np.random.default_rng(seed)
  d = rng.dirichlet(np.ones(ny), nx)
  ref = rng.dirichlet(np.ones(ny) * 2, nx)
  w = rng.dirichlet(np.ones(nx) * 3)
  return make_instance(w, d, rng.uniform(-1, 1, (nx, ny)), 0.6, reference=ref)


def test_one_hot_head_reproduces_tabular_objectives_and_gradients():
  inst = _instance()
  theta = jnp.asarray(np.random.default_rng(1).normal(size=inst.shape))
  head = pm.head_from_tabular(theta)
  phi = pm.one_hot_features(inst.shape[0])
  log_pi = obj.policy_log_probs(inst, theta)
  assert_close(pm.log_policy(head, phi, inst), log_pi)
  assert_close(pm.sft_loss(head, phi, inst), obj.sft_loss(inst, log_pi))
  assert_close(pm.reward(head, phi, inst), obj.reward(inst, log_pi))
  assert_close(pm.regularized_reward(head, phi, inst), obj.regularized_reward(inst, log_pi))
  g = pm.objective_grad(head, phi, inst, 1.0, 0.5)
  want = obj.sft_grad(inst, theta) - 0.5 * obj.rl_grad(inst, theta)
  assert_close(g.W.T, want, atol=1e-13)


def test_restrict_selects_prompts():
  inst = _instance()
  mask = jnp.array([True, False, True, False, False])
  sub = pm.restrict(inst, mask)
  w = np.asarray(inst.prompt_weights) * np.asarray(mask)
  assert_close(sub.prompt_weights, w / w.sum())
  head = pm.init_head(jax.random.PRNGKey(0), 3, 4, scale=1.0)
  phi = pm.gaussian_features(jax.random.PRNGKey(1), 5, 4)
  lp = pm.log_policy(head, phi, inst)
  per = -np.sum(np.asarray(inst.data) * np.asarray(lp), axis=1)
  assert_close(pm.sft_loss(head, phi, sub), np.sum(per * w) / w.sum(), rtol=1e-12)


def test_full_batch_and_minibatch_training_decrease_the_objective():
  inst = _instance(2, nx=12, ny=4)
  phi = pm.gaussian_features(jax.random.PRNGKey(2), 12, 6)
  head = pm.init_head(jax.random.PRNGKey(3), 4, 6, scale=1.0)
  for opt, lr in (("sgd", 0.5), ("adam", 0.05)):
    _, hist = pm.train(head, phi, inst, 1.0, 0.0, n_steps=50, optimizer=opt, learning_rate=lr,
                       eval_insts=(inst,), record_every=10)
    loss = np.asarray(hist["sft_loss_0"])
    assert loss.shape == (6,) and np.all(np.diff(loss) < 0), opt
  _, values = pm.train_minibatch(head, phi, inst, 0.0, 1.0, jax.random.PRNGKey(4), n_epochs=20,
                                 batch_size=4)
  assert float(values[-1]) < float(values[0]) - 1e-3


def test_feature_families_shapes():
  key = jax.random.PRNGKey(0)
  assert pm.low_rank_features(key, 10, 8, 2).shape == (10, 8)
  assert np.linalg.matrix_rank(np.asarray(pm.low_rank_features(key, 10, 8, 2))) == 2
  feats, ids = pm.clustered_features(key, 10, 8, 3)
  assert feats.shape == (10, 8) and int(ids.max()) < 3
  assert int(pm.split_mask(key, 10, 0.3).sum()) == 3


def test_gold_task_has_zero_c1_in_tabular_form():
  task = gold_task.gold_label_task(jax.random.PRNGKey(0), n_prompts=20, dim=4)
  inst = task.inst.__class__(**{**task.inst.__dict__, "reference": task.inst.data})
  assert abs(float(obj.c1(inst))) < 1e-12


def test_shared_parameters_show_the_held_out_effects_and_tabular_does_not():
  key = jax.random.PRNGKey(0)
  shared = gold_task.gold_label_task(key, family="gaussian")
  tab = gold_task.gold_label_task(key, family="one_hot")
  a = gold_task.run_pipeline(shared, "sft_then_rl")
  held = np.asarray(a["rl"]["sft_loss_held_out"])
  assert held[-1] > held[0] + 0.5                      # RL after SFT raises held-out SFT loss
  assert held[-1] > float(a["base_sft_loss_held_out"]) + 0.5   # ... above the base level
  b = gold_task.run_pipeline(shared, "rl_then_sft")
  rew = np.asarray(b["sft"]["reward_held_out"])
  assert rew[-1] < rew[0] - 0.1                        # SFT after RL lowers held-out reward
  a_t = gold_task.run_pipeline(tab, "sft_then_rl")
  b_t = gold_task.run_pipeline(tab, "rl_then_sft")
  held_t = np.asarray(a_t["rl"]["sft_loss_held_out"])
  assert np.max(np.abs(held_t - held_t[0])) < 1e-12    # tabular: held-out prompts never move
  rew_t = np.asarray(b_t["sft"]["reward_held_out"])
  assert np.max(np.abs(rew_t - rew_t[0])) < 1e-12
  train_t = np.asarray(a_t["rl"]["sft_loss_train"])
  assert train_t[-1] <= train_t[0] + 1e-12             # and RL does not raise the train loss

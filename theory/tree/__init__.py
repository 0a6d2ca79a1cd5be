r"""The token level (THEORY.md part G, this project's): prefix trees of tokens, exact and level by level.

For each prompt the responses are the leaves of a prefix tree over a vocabulary of k tokens with
maximum length T. An internal node s (a prefix without EOS, |s| < T) has k child slots s·a: an
internal child, a leaf (a = EOS or |s·a| = T) or absent (ρ(a|s) = 0). An autoregressive tabular
policy has free logits per (prompt, node): π(a|x, s) = softmax(θ_{x,s})_a.

Representation (:mod:`.instance`): level by level, level t holding the internal nodes of depth t in
a padded bucket of N_t rows with k slots each, plus parent/child index arrays. Every recursion is a
loop over the T levels of gathers on [N_t, k] arrays, vmapped over prompts, so the cost grows with
the number of nodes (never with sequences × length) and jit compiles once per bucket.

Modules:
  instance      the TreeInstance pytree, padding, stacking, validation of concrete trees
  build         host-side prompt trees (per-node rows, sequence tables, data, rewards) -> arrays
  rewards       the reward rules on token sequences (table, exact match, final answer, length)
  policy        per-node log-softmax, reach, sequence (leaf) log-probabilities, conditionals of a
                leaf distribution
  fields        bottom-up expectations (Q^π, V^π) and exact logit fields E_π[w(y) ∇log π(y)]
  objectives    L, J, J_β, KL(π‖ρ) by the chain rule, SFT excess, on trees
  bellman       G1: soft Bellman values, the token-level optimum π*, log Z_β
  sft           G2: token-sum and token-mean SFT, the token-mean optimum and its excess
  kl            G3: the per-token KL estimators (k1, k2, k3, verl's clamped k3) and their exact
                expected gradients and values
  fixed_points  G4: fixed points of the KL constructs (closed forms by backward induction and by
                flowing to stationarity), with their SFT loss, reward, J_β and frontier regret
  atomic        the atomic case as depth-1 trees and back; the leaf set of any tree as an atomic
                Instance (parts A–F on the leaves)
  chunks        a function of a tree evaluated over chunks of its prompts (per-prompt outputs put
                together, sums over prompts added): cache-sized passes for many prompts

G5 (length normalisation in group policy gradients) is left to the recipes built on this package:
a group estimator's exact field is Σ_y π(y) E[w_i | y_i = y] ∇log π(y) with w the per-sequence
weight (advantage × length normaliser), i.e. :func:`.fields.reinforce_field` with a leaf weight;
the group's distribution is enumerated on the flat leaf axis of :func:`.atomic.leaf_instance`
(leaf probabilities, rewards and :func:`.policy.leaf_lengths` are all there).

References: THEORY.md part G (this project's statements); research/fusion-methods.md Rule 4 and the
addendum on verl's KL estimators.
"""

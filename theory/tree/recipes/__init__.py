"""Fusion recipes on prefix trees (THEORY.md F and G, this project's exact forms).

Every recipe is a :class:`~.base.TreeRecipe`: an exact expected field on the per-node logits, a
Monte-Carlo estimator that samples responses from the tree, and an optional state hook. The
registry (:mod:`.registry`) collects them.
"""

"""Figures of this topic (being written)."""

FIGURES: dict = {}

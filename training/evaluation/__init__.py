"""Served models -> numbers: load a built repository (or the heads), score, report, agreement, products."""

"""Rows: datasets (KIND:PATH), labels, near-duplicate groups, splits, augmentation, the reviewers' labels. Imports nothing else of training."""

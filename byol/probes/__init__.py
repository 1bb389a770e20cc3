"""Measuring features: kNN, linear and semi-supervised protocols, feature extraction, collapse numbers."""

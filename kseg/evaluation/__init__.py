"""Evaluation scores (`metrics`): numpy only, importable without TensorFlow."""

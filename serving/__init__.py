"""Serving the pushed next_category models over the TensorFlow Serving APIs."""

"""Evaluator: TFX's Evaluator, without a baseline when nothing is serving yet."""

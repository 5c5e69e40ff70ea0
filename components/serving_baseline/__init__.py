"""ServingBaseline: the model serving now, as the Evaluator's baseline (none on a first run)."""

"""The embedded default dataset: a synthetic e-commerce clickstream."""

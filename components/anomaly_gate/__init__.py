"""AnomalyGate: data anomalies and drift stop the pipeline before training."""

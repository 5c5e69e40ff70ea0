"""What a run leaves to read: its summary, the HTML report, the skew report, TensorBoard logs."""

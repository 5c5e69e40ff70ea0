"""The gRPC front end: tensorflow.serving.PredictionService and ModelService."""

"""TFLiteConverter: the trained model as a checked, full-integer int8 TFLite model."""

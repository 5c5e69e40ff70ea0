"""Tests of serving/apis: the data plane, tensors and JSON, gRPC and REST."""

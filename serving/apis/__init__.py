"""TensorFlow Serving's APIs: the transport-free data plane, wire formats, gRPC and REST."""

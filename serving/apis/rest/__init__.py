"""The HTTP/REST front end: TensorFlow Serving's URLs, JSON and status codes."""

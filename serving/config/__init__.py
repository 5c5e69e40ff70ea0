"""The server's settings: flags and config files, in TensorFlow Serving's formats."""

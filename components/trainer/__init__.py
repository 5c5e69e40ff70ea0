"""The Trainer's user module: a Keras Transformer next-category classifier."""

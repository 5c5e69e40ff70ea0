"""The next_category TFX pipeline: configuration, composition and runners."""

"""The models: version lifecycle, loading and the servables that run them, batching, warmup."""

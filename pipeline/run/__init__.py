"""Running the pipeline: the Beam and local runners, their flags, the console, preflight checks."""

"""Pipeline components and the user code TFX components call."""

"""The pipeline on Kubeflow: compile, package, the steps' entry point, submit, schedule, TFJob."""

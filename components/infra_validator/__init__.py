"""InfraValidator: a canary that serves the candidate model in this project's server."""

"""Tests of serving/observability: request and audit logs, the log writer."""

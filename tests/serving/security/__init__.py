"""Tests of serving/security: access control and TLS."""

"""Tests of the model server, its client and its deployment files."""

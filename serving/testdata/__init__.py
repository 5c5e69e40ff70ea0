"""Canned test models for the serving tests, built by a script at test time."""

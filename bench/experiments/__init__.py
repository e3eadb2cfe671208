"""Experiment drivers whose findings are written in docs/, each kept because a test runs it."""

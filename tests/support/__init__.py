"""Helpers for the tests only: servers the fixtures start, shared checks."""

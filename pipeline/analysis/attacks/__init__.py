"""Attacks on a finished run."""

"""MONAI network builders and DP-compatibility checks."""

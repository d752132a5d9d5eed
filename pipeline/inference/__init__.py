"""Inference with a finished run's final model: in the clear, or on CKKS-encrypted images.

``clear`` loads the run and the images and predicts in plaintext; ``encrypted`` holds the two
parties of encrypted inference (the data owner with its CKKS key, the model owner with the
weights) and the network compiled into CKKS operations; ``session`` runs the model owner in its own
process with only bytes crossing; ``report`` writes predictions.csv, summary.json and the
encrypted-inference report; ``cli`` is ``fedmed-infer`` / ``python scripts/infer.py``.
"""

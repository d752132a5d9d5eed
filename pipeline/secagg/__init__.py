"""Secure aggregation: CKKS-encrypted (TenSEAL), quantised, packed updates that the server adds blind.

Two sides, kept apart by their imports:

* **Server side** (may be imported by :mod:`strategies` and :mod:`pipeline.flower.server_app`):
  :mod:`.params` (parameter rules, packed layout), :mod:`.wire` (the payload's wire format,
  digests, parameter fingerprints), :mod:`.server_sum` (running sums with a context that holds no
  key) and :mod:`.aggregates` (the round sums on disk).
* **Key-holder side** (hospitals and the consortium only): :mod:`.keys` (the only module that
  makes or reads a secret context), :mod:`.quantize` (stochastic quantisation and packing),
  :mod:`.codec` (encode an update, decode an aggregate) and :mod:`.consortium` (rebuild, test and
  save the final model).

No server-side module imports a key-holder module (``tests/test_secagg_boundary.py`` checks the
import graph and what a running server process has loaded).
"""

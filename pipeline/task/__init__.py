"""The learning task: data, how it is shared among hospitals, the model, training and metrics.

Owns: data sources and datasets (:mod:`.data`), partitioning with flwr-datasets (:mod:`.partition`),
each hospital's share and the held-out test split (:mod:`.sites`), building the configured MONAI
network and its flat weight vector (:mod:`.model`), local training and evaluation, plain or
DP-SGD (:mod:`.training`), and the metrics (:mod:`.metrics`).

Imports :mod:`pipeline.privacy` (DP-SGD training) and :mod:`models`; never Flower, never the
secure-aggregation code.
"""

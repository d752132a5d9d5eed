"""Names of everything that crosses the network between the server and the hospitals.

Message types beyond Flower's ``train``/``evaluate``, the records of a message and the keys of
their ConfigRecords, named once. The update payload's own format is :mod:`pipeline.secagg.wire`.
"""

from __future__ import annotations

# Message types beyond Flower's train/evaluate.
QUERY = "query"
TRAIN = "train"
EVALUATE = "evaluate"

# RecordDict keys
CONFIG = "config"  # ConfigRecord: round settings (server -> hospital) or reply facts (hospital -> server)
METRICS = "metrics"  # MetricRecord

# ConfigRecord keys
ROUND = "round"
AGG_ROUND = "agg-round"  # the round whose aggregate the message carries
TOTAL_WEIGHT = "total-weight"
COUNT = "count"
N_REF = "n-ref"
HOSPITAL = "hospital"
NUM_TRAIN = "num-train"
NUM_VAL = "num-val"
WEIGHT = "weight"
EPSILON = "epsilon"
OUT_OF_BUDGET = "out-of-budget"
PROBLEM = "problem"
MODEL_ROUND = "model-round"
CHANNELS = "channels"
NUM_CLASSES = "num-classes"
IMAGE_SIZE = "image-size"
NUM_PARAMS = "num-params"
PROXIMAL_MU = "proximal-mu"
SERVER_OPTIMIZER = "server-optimizer"  # JSON of strategies.server_optimizers.ServerOptimizer.spec()
DP_REPORT = "dp-report"  # JSON: the hospital's DP plan, accountant history and spending (privacy.json)

# MetricRecord keys of a train reply and an evaluate reply
TRAIN_LOSS = "train_loss"
TRAIN_SECONDS = "train_seconds"
ENCODE_SECONDS = "encode_seconds"
CLIPPED_FRACTION = "clipped_fraction"
DECODE_SECONDS = "decode_seconds"
VAL_METRICS = ("val_loss", "val_auc", "val_accuracy", "val_mcc")

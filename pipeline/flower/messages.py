"""Names of everything that crosses the network between the server and the hospitals.

Message types beyond Flower's ``train``/``evaluate``, the records of a message and the keys of
their ConfigRecords, named once. The update payload's own format is :mod:`pipeline.secagg.wire`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import RecordDict

# Message types beyond Flower's train/evaluate.
QUERY = "query"
TRAIN = "train"
UNMASK = "query.unmask"  # secure aggregation: survivors reveal what removes the masks of the round's sum
EVALUATE = "evaluate"

# RecordDict keys
CONFIG = "config"  # ConfigRecord: round settings (server -> hospital) or reply facts (hospital -> server)
METRICS = "metrics"  # MetricRecord
TIMING = "timing"  # MetricRecord of every reply: the handler's seconds by phase (pipeline.reporting.timing)

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
DEVICE = "device"  # train reply: where the hospital trained (cpu, cuda, cuda:1, ...)
REFUSED = "refused"  # evaluate/train reply: the hospital refused the aggregate it was sent
MODEL_ROUND = "model-round"  # query/train/evaluate reply: the round of the global model the hospital holds
CHANNELS = "channels"
NUM_CLASSES = "num-classes"
IMAGE_SIZE = "image-size"
NUM_PARAMS = "num-params"
PROXIMAL_MU = "proximal-mu"
SERVER_OPTIMIZER = "server-optimizer"  # JSON of strategies.server_optimizers.ServerOptimizer.spec()
DP_REPORT = "dp-report"  # JSON: the hospital's DP plan, accountant history and spending (privacy.json)
ATTEMPT = "attempt"  # a round abandoned by the checks is retried with fresh training and fresh masks

# Secure aggregation (pipeline/secagg/masks.py, agreement.py)
AGREE_KEY = "agree-key"  # query reply: this run's ECDH public key (PEM)
AGREE_SIG = "agree-sig"  # query reply: its signature with the hospital's signing key
ROSTER_IDS = "roster-ids"  # train: the participating hospitals and their signed agreement keys
ROSTER_KEYS = "roster-keys"
ROSTER_SIGS = "roster-sigs"
SHARES_TO = "shares-to"  # train reply: encrypted shares of this round's self-mask seed, by recipient
SHARES = "shares"
SELF_COMMIT = "self-commit"  # train reply: SHA-256 of the self-mask seed
SURVIVORS = "survivors"  # unmask / evaluate: hospitals whose updates are in the sum
DROPPED = "dropped"  # unmask: participants whose updates are not
SHARES_FROM = "shares-from"  # unmask: the shares addressed to this hospital, by sender
VERIFY_HOSPITAL = "verify-hospital"  # unmask: one other reply's chunk to check for the hospitals' key
VERIFY_CHUNK = "verify-chunk"
VERIFY_SLOT = "verify-slot"
SELF_SHARES_OF = "self-shares-of"  # unmask reply: this hospital's shares of the survivors' seeds
SELF_SHARES = "self-shares"
PAIR_WITH = "pair-with"  # unmask reply: this hospital's pair seeds with the dropped hospitals
PAIR_SEEDS = "pair-seeds"
VERDICT = "verdict"  # unmask reply: "" if the checked chunk decrypts under the key, else why not
UNMASK_INFO = "unmask-info"  # evaluate: JSON of the seeds that remove the sum's masks

# MetricRecord keys of a train reply and an evaluate reply
TRAIN_LOSS = "train_loss"
TRAIN_SECONDS = "train_seconds"
ENCODE_SECONDS = "encode_seconds"
CLIPPED_FRACTION = "clipped_fraction"
DECODE_SECONDS = "decode_seconds"
# val_threshold: the hospital's Youden threshold on its validation data (binary single-label data only;
# absent otherwise, so the example-weighted mean is over the hospitals that report one)
VAL_METRICS = ("val_loss", "val_auc", "val_accuracy", "val_mcc", "val_threshold")

# Train/evaluate: the earlier aggregates of a catch-up chain (a hospital back from an outage), one
# ArrayRecord each (pipeline.secagg.aggregates.Aggregate.to_record); the last one travels as usual.
CATCH_UP_PREFIX = "catch-up-"


def catch_up_key(agg_round: int) -> str:
    """The record name of round ``agg_round``'s aggregate in a catch-up chain (sorts by round)."""
    return f"{CATCH_UP_PREFIX}{agg_round:06d}"


def to_bytes(content: RecordDict) -> bytes:
    """``content`` as bytes in Flower's own protobuf form (a saved reply, the hospital service's wire)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).SerializeToString()


def from_bytes(data: bytes) -> RecordDict:
    """Inverse of :func:`to_bytes`."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

    proto = RecordDictProto()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)

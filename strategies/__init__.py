"""Server-side aggregation: FedAvg over plaintext or CKKS-encrypted updates."""

"""What `train_accelerate.py` runs: the training data pipeline (`data`) and crash-safe checkpoints
(`checkpoint`)."""

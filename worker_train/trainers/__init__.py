"""LoRA trainers, one file per model family, sharing the loop in :mod:`worker_train.trainers.loop`."""

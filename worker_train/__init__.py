"""The train stage: snapshots of the accepted set, LoRA trainers, adapters, checkpoints, rounds."""

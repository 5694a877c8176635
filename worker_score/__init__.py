"""The score stage: scorer backends (CLIP, DINOv2, change, face identity, garment) and the
decisions made from their stored metrics."""

"""Edit stage: diffusion image editors (InstructPix2Pix, Qwen-Image-Edit Plus) behind one protocol.

``worker_edit.backends`` holds the backends and their registry; ``worker_edit.tiny`` builds
tiny random checkpoints, offline, for tests and smoke runs.
"""

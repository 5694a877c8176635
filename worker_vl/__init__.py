"""VL stage worker: analyses person and garment images with a vision-language model."""

"""The generate stage: text-to-image FLUX renders of a character, with its LoRA, as new assets."""

"""Memorization found without searching the training set: Carlini et al. (2023) section 4's
generate-and-filter extraction (``extract``) and Wen et al. (ICLR 2024)'s detector of memorized
prompts in text-to-image models (``wen``)."""

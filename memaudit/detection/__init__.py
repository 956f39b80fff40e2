"""Memorization found without the training data: detectors of memorized prompts in text-to-image
models (``memaudit detect``, ``memaudit.detect``): Wen et al. (ICLR 2024, ``wen``), Jeon et al.
(ICML 2025, ``jeon``) and Asthana & Belagiannis (ICLR 2026, ``asthana``), registered in
``detectors``; one entry function, ``run_detect(DetectConfig)``."""

from memaudit.detection.run import DetectConfig, run_detect

__all__ = ["DetectConfig", "run_detect"]

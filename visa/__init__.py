"""VISA: training-free re-ranking for text-to-visual retrieval (Visual Abstraction, ICML 2025)."""

__version__ = "0.1.0"

"""VISA: training-free re-ranking for text-to-visual retrieval (Visual Abstraction, ICML 2025)."""

import logging

__version__ = "0.1.0"

# faiss's loader logs at INFO each CPU-specific build it tries before the one installed, with the
# ModuleNotFoundError of each ("No module named 'faiss.swigfaiss_avx2'"), on every run that imports it (the
# normalisers, retrieval.index=faiss); a run that went well must not print lines that read as errors. Its
# warnings still show. Set here, on import of any part of the project, before anything imports faiss.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

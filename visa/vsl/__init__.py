"""Region-feature image-text matchers (SGR, SAF, SGRAF) trained with the Visual Semantic Loss (VSL).

Data in SCAN's precomputed format (`visa.vsl.data`), the models (`visa.vsl.models`), the losses
(`visa.vsl.losses`), the Lightning module (`visa.vsl.module`) and the paper-style evaluation
(`visa.vsl.evaluate`). Training entry point: `python -m visa.train` (docs/vsl.md).
"""

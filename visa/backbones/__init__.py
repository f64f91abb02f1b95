"""Dual encoders. A backbone is a class with this interface, instantiated from `conf/backbone/<name>.yaml`:

    identity() -> dict                      # everything that changes the embeddings (cache key)
    encode_text(list[str]) -> Tensor[n, d]  # L2-normalised
    encode_visual(list[Item]) -> Tensor[n, d]  # L2-normalised
    batch_size: int

Constructors only store settings; weights load on first use, so a fully cached run loads no model.
"""

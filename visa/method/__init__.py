"""The method: the stage graph retrieve -> describe -> ask -> answer -> score -> fuse -> evaluate, and its
pieces (prompts and their parsing, passages, fusion, metrics, the top-K search, pairwise retrieval, shards).

It knows the parts' interfaces (`visa.method.parts`), never a particular model."""

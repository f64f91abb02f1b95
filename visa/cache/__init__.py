"""Content-addressed storage of stage results, and the one stage runner every model stage goes through.

- `codec`: the key of a result (`make_key`: SHA-256 of stage, model identity, inputs) and the value encoding;
- `store`: the `Store` interface and the single-machine SQLite file (`SQLiteStore`);
- `shared`: one append-only log per writer, for a folder on a network filesystem (`SharedFolderStore`);
- `layout`: `open_cache(folder, layout)` picks one of the two;
- `runner`: `StageRunner` computes only what the store lacks and stores each result as it arrives;
- `admin` (`python -m visa.cache show|merge|prune|move-aside`): looking after a cache folder.
"""

from visa.cache.codec import make_key, model_label
from visa.cache.layout import open_cache
from visa.cache.runner import StageRunner, batched
from visa.cache.shared import SharedFolderStore
from visa.cache.store import SQLiteStore, Store, default_cache_dir, move_aside

__all__ = [
    "SQLiteStore",
    "SharedFolderStore",
    "StageRunner",
    "Store",
    "batched",
    "default_cache_dir",
    "make_key",
    "model_label",
    "move_aside",
    "open_cache",
]

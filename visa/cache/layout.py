"""Which store a cache folder gets: the single SQLite file on a local disk, one log per writer on a network
filesystem (`cache_layout=auto|sqlite|shared`)."""

from __future__ import annotations

import os
from pathlib import Path

from visa.cache.shared import SharedFolderStore
from visa.cache.store import SQLiteStore
from visa.core.errors import VisaError

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "9p"}


def network_filesystem(path: str | os.PathLike) -> str | None:
    """The type of the network filesystem `path` is on ("nfs4", "lustre", ...), or None (local, or not
    Linux). Read from /proc/mounts: the mount point that is the longest prefix of the real path."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, parts[2]
    if best_type and (best_type in NETWORK_FILESYSTEMS or best_type.startswith("fuse.glusterfs")):
        return best_type
    return None


LAYOUTS = ("auto", "sqlite", "shared")


def open_cache(root: str | os.PathLike, layout: str = "auto"):
    """The cache in folder `root`: the single SQLite file (one host; the default) or, on shared storage,
    one log per writer (this module). `auto` picks the logs when `root` is on a network filesystem."""
    if layout not in LAYOUTS:
        raise VisaError(f"cache_layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "shared" or (layout == "auto" and network_filesystem(Path(root).expanduser())):
        return SharedFolderStore(root)
    return SQLiteStore(root)

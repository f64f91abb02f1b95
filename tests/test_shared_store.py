"""The per-writer log store for caches on shared storage: many writer processes at once, a writer killed
mid-write, a reader while writers write, and merge / prune of a folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from visa.cache.codec import encode_value
from visa.cache.shared import FOLDER, SharedFolderStore, encode_record, rewrite, scan

REPO = Path(__file__).resolve().parents[1]

# A writer process: puts keys "<tag>-<i>" (and keys shared by every writer) with values derived from the key.
WRITER = """
import sys, time
from visa.cache.shared import SharedFolderStore
folder, tag, count, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = SharedFolderStore(folder)
for i in range(count):
    own, shared = f"{tag}-{i}", f"shared-{i % 50}"
    batch = {own: {"text": f"value of {own}"}, shared: {"text": f"value of {shared}"}}
    store.put_many("answer", batch, model="qwen2-vl")
    if pause:
        time.sleep(pause)
    if i == 10:
        print("started", flush=True)
store.close()
"""


def _writer(folder: Path, tag: str, count: int, pause: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), tag, str(count), str(pause)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reader(folder: Path) -> SharedFolderStore:
    return SharedFolderStore(folder)


def _expected(key: str) -> dict:
    return {"text": f"value of {key}"}


def test_concurrent_writers_lose_and_corrupt_nothing(tmp_path):
    procs = [_writer(tmp_path, f"w{n}", 300) for n in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    keys = [f"w{n}-{i}" for n in range(4) for i in range(300)] + [f"shared-{i}" for i in range(50)]
    found = _reader(tmp_path).get_many(keys)
    assert found == {k: _expected(k) for k in keys}
    table, logs = scan(tmp_path)
    assert len(logs) == 4 and all(log.closed for log in logs)
    row = table[("answer", "qwen2-vl")]
    assert row.keys == len(keys) and row.records == 4 * 600  # each writer also wrote the 50 shared keys


def test_writer_killed_mid_write_loses_only_its_unfinished_record(tmp_path):
    proc = _writer(tmp_path, "k", 10**6, pause=0.001)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (log,) = (tmp_path / FOLDER).iterdir()
    # what a node crash or a network filesystem can leave: the start of a record without its end
    torn = encode_record("k-torn", "answer", "qwen2-vl", encode_value({"text": "never complete"}))
    with open(log, "ab") as f:
        f.write(torn[: len(torn) // 2])
    reader = _reader(tmp_path)
    reader.refresh()
    written = [k for k in reader.index if k.startswith("k-")]
    assert len(written) > 10 and "k-torn" not in reader.index
    assert reader.get_many(written) == {k: _expected(k) for k in written}
    # a later writer appends to its own file, and the folder still reads cleanly
    later = SharedFolderStore(tmp_path)
    later.put_many("answer", {"k-torn": _expected("k-torn")}, model="qwen2-vl")
    later.close()
    assert _reader(tmp_path).get_many(["k-torn"]) == {"k-torn": _expected("k-torn")}
    # the killed writer's log counts as finished (its process is gone): merge packs it
    files, kept, _ = rewrite(tmp_path)
    assert files == 2 and kept == len(reader.index) + 1  # its keys, the shared ones, and k-torn


def test_damaged_record_stops_the_reader_there(tmp_path):
    store = SharedFolderStore(tmp_path)
    store.put_many("describe", {"a": "first", "b": "second", "c": "third"}, model="m")
    store.close()
    (log,) = (tmp_path / FOLDER).iterdir()
    data = bytearray(log.read_bytes())
    data[data.index(b"second")] ^= 0xFF  # one flipped byte in b's value
    log.write_bytes(bytes(data))
    assert _reader(tmp_path).get_many(["a", "b", "c"]) == {"a": "first"}


def test_reader_while_writers_write_sees_only_correct_values(tmp_path):
    procs = [_writer(tmp_path, f"r{n}", 400, pause=0.002) for n in range(2)]
    keys = [f"r{n}-{i}" for n in range(2) for i in range(400)]
    reader = _reader(tmp_path)
    seen = 0
    while any(p.poll() is None for p in procs):
        found = reader.get_many(keys)
        assert all(v == _expected(k) for k, v in found.items())
        assert len(found) >= seen  # what was readable stays readable
        seen = len(found)
    for p in procs:
        assert p.returncode == 0, p.stderr.read()
    assert reader.get_many(keys) == {k: _expected(k) for k in keys}


def test_arrays_round_trip_and_own_writes_are_readable(tmp_path):
    store = SharedFolderStore(tmp_path)
    vector = np.arange(6, dtype=np.float32)
    store.put_many("encode_visual", {"v": vector}, model="siglip")
    assert np.array_equal(store.get_many(["v"])["v"], vector)
    store.close()
    assert np.array_equal(_reader(tmp_path).get_many(["v"])["v"], vector)


def test_a_run_that_writes_nothing_leaves_no_file(tmp_path):
    store = SharedFolderStore(tmp_path)
    assert store.get_many(["x"]) == {}
    store.close()
    assert list((tmp_path / FOLDER).iterdir()) == []


def test_merge_and_prune(tmp_path):
    for n in range(3):
        store = SharedFolderStore(tmp_path)
        store.put_many("answer", {f"a{n}": n, "same": 0}, model="mllm")
        store.put_many("score", {f"s{n}": float(n)}, model="reranker")
        store.close()
    files, kept, dropped = rewrite(tmp_path)
    assert (files, kept, dropped) == (3, 7, 0)
    table, logs = scan(tmp_path)
    assert len(logs) == 1 and table[("answer", "mllm")].keys == 4 and table[("score", "reranker")].keys == 3
    files, kept, dropped = rewrite(tmp_path, drop=lambda r: r.stage == "score")
    assert (kept, dropped) == (4, 3)
    found = _reader(tmp_path).get_many(["a0", "a2", "same", "s1"])
    assert found == {"a0": 0, "a2": 2, "same": 0}


def test_unfinished_log_of_a_running_writer_is_left_alone(tmp_path):
    store = SharedFolderStore(tmp_path)
    store.put_many("answer", {"x": 1}, model="m")  # open: this process still writes it
    assert rewrite(tmp_path) == (0, 0, 0)
    store.close()
    assert rewrite(tmp_path)[0] == 1


@pytest.mark.parametrize("fstype, expected", [("nfs4", "nfs4"), ("lustre", "lustre"), ("ext4", None)])
def test_network_filesystem_from_mounts(tmp_path, monkeypatch, fstype, expected):
    from visa.cache import layout

    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} {fstype} rw 0 0\n")
    real_path = Path

    monkeypatch.setattr(layout, "Path", lambda p: real_path(mounts) if p == "/proc/mounts" else real_path(p))
    assert layout.network_filesystem(tmp_path / "cache") == expected

"""Reads the event file written by write_events.cpp with TensorBoard's own reader
and checks every scalar. Usage: read_events.py <event file>. Exit 0 when all match."""
import math
import os
import shutil
import struct
import sys
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

WALL0 = 1700000000.25


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def expected():
    out = {"train/loss": [], "train/lr": [], "edge": []}
    for step in range(10):
        out["train/loss"].append((step, WALL0 + step, f32(10.0 / (step + 1))))
        out["train/lr"].append((step, WALL0 + step, f32(1e-3 * step)))
    for i, v in enumerate([math.nan, math.inf, -math.inf, -0.5]):
        out["edge"].append((100 + i, WALL0 + 100 + i, v))
    out["edge"].append((1 << 40, WALL0 + 104, 7.0))
    return out


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def main(path):
    want = expected()
    n_scalars = sum(len(v) for v in want.values())
    # The loader stops quietly at a record with a bad CRC, so count every record.
    events = list(EventFileLoader(path).Load())
    if len(events) != 1 + n_scalars:
        sys.exit(f"FAIL: the reader loaded {len(events)} events, expected {1 + n_scalars}")
    if events[0].file_version != "brain.Event:2":
        sys.exit(f"FAIL: first event file_version {events[0].file_version!r}")

    acc = EventAccumulator(os.path.dirname(path))
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    if tags != sorted(want):
        sys.exit(f"FAIL: scalar tags {tags}, expected {sorted(want)}")
    for tag, rows in want.items():
        got = [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]
        if len(got) != len(rows) or not all(
            g[0] == w[0] and g[1] == w[1] and same(g[2], w[2]) for g, w in zip(got, rows)
        ):
            sys.exit(f"FAIL: {tag}: read {got}, expected {rows}")

    # The reader really checks our CRCs: one flipped byte in the last record's data
    # makes it stop one event early.
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, os.path.basename(path))
        shutil.copyfile(path, bad)
        with open(bad, "r+b") as f:
            f.seek(-6, os.SEEK_END)
            byte = f.read(1)
            f.seek(-6, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0x01]))
        if len(list(EventFileLoader(bad).Load())) != n_scalars:
            sys.exit("FAIL: the reader accepted a record with a corrupted byte")
    print(f"OK: {n_scalars} scalars in {len(tags)} tags read back by the tensorboard reader")


if __name__ == "__main__":
    main(sys.argv[1])

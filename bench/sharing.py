#!/usr/bin/env python3
"""Disk use of two images' rootfs trees that share base layers, for bench/compare.

Usage: sharing.py CACHE ROOTFS_A ROOTFS_B OUT_JSON
Writes the blobs' size, each tree's, both trees' together (hard links counted once) and how
much of the second tree is files identical (same path, same bytes) to the first's.
"""

import json
import os
import sys


def disk_bytes(*roots):
    """Allocated bytes under the roots, each inode once (as du)."""
    seen, total = set(), 0
    for root in roots:
        for parent, dirs, files in os.walk(root):
            for name in dirs + files:
                st = os.lstat(os.path.join(parent, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def regular_files(root):
    out = {}
    for parent, _, files in os.walk(root):
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path) and os.path.isfile(path):
                out[os.path.relpath(path, root)] = path
    return out


def identical_bytes(a, b):
    """Bytes of b's regular files that a has at the same path with the same content, on disk."""
    files_a, files_b = regular_files(a), regular_files(b)
    total = 0
    for rel in files_a.keys() & files_b.keys():
        sa, sb = os.stat(files_a[rel]), os.stat(files_b[rel])
        if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
            continue  # already shared
        if sa.st_size == sb.st_size:
            with open(files_a[rel], "rb") as fa, open(files_b[rel], "rb") as fb:
                if fa.read() == fb.read():
                    total += sb.st_blocks * 512
    return total


def main(cache, a, b, out):
    result = {
        "blobs": disk_bytes(os.path.join(cache, "v1", "blobs")),
        "a": disk_bytes(a),
        "b": disk_bytes(b),
        "both": disk_bytes(a, b),
        "identical": identical_bytes(a, b),
    }
    json.dump(result, open(out, "w"))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])

#!/usr/bin/env python3
"""Pack directories as the layers of one OCI image layout (gzip, deterministic order).

Usage: oci_layer.py LAYOUT DIR [DIR...]   (bottom layer first; run as root to read every file)

A DIR after the first may be an overlayfs upper directory: its whiteouts (0/0 character
devices) become `.wh.NAME` entries, and opaque directories (the trusted.overlay.opaque xattr)
get a `.wh..wh..opq` marker. Owners, modes and mtimes are kept; the image config runs
/bin/bash with Debian's PATH. Python 3 standard library and the `gzip` command only.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile

EPOCH = 1704067200


def dump(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path):
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def add_tree(tar, root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != "." and is_opaque(dirpath):
            info = tarfile.TarInfo(os.path.join(rel_dir, ".wh..wh..opq"))
            info.mtime = EPOCH
            tar.addfile(info)
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            if is_whiteout(st):
                info = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + name))
                info.mtime = EPOCH
                tar.addfile(info)
            else:  # directories, files, and symlinks (os.walk lists those to directories as dirs)
                tar.add(path, arcname=rel, recursive=False)


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as fh:
        fh.write(data)
    return "sha256:" + digest


def main(layout, dirs):
    tmp = layout + ".tmp"
    subprocess.run(["rm", "-rf", tmp], check=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))
    layers, diff_ids = [], []
    for d in dirs:
        tar_path = os.path.join(tmp, "layer.tar")
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            add_tree(tar, d)
        with open(tar_path, "rb") as fh:
            diff_ids.append("sha256:" + hashlib.file_digest(fh, "sha256").hexdigest())
        gz = subprocess.run(["gzip", "-n", "-6", "-c", tar_path], stdout=subprocess.PIPE, check=True).stdout
        os.remove(tar_path)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": blob(tmp, gz), "size": len(gz)})
        print("  %s: %d MB compressed" % (d, len(gz) >> 20), file=sys.stderr)
    config = {"created": "2024-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                         "Cmd": ["/bin/bash"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "images/mkdebian"} for _ in dirs]}
    cfg = dump(config)
    manifest = dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                "digest": blob(tmp, cfg), "size": len(cfg)},
                     "layers": layers})
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(tmp, manifest),
           "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"}}
    with open(os.path.join(tmp, "index.json"), "wb") as fh:
        fh.write(dump({"schemaVersion": 2, "manifests": [top]}))
    with open(os.path.join(tmp, "oci-layout"), "wb") as fh:
        fh.write(dump({"imageLayoutVersion": "1.0.0"}))
    subprocess.run(["rm", "-rf", layout], check=True)
    os.rename(tmp, layout)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])

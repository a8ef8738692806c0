#!/usr/bin/env python3
"""Build boxrun's test images as OCI image layouts, deterministically.

Usage: mkimages.py [-v] [--busybox PATH] OUTDIR

Writes OUTDIR/{tiny,layered,multiarch,tiny-docker,tiny-zstd,tiny-mislabeled,tiny-child}, each an OCI image layout
(oci-layout, index.json, blobs/sha256/...) whose index.json names its one
entry with org.opencontainers.image.ref.name=latest. Called by build.sh, which
builds into a temporary directory and renames it into place.

Byte-for-byte deterministic: fixed mtimes, uid/gid 0, empty user/group names,
ustar headers, entries in a fixed order, gzip with no file name and mtime 0,
JSON with a fixed key order. The same busybox binary always gives the same
digests. Python 3 standard library only.
"""

import gzip
import hashlib
import shutil
import subprocess
import io
import json
import os
import platform
import sys
import tarfile

# 2024-01-01T00:00:00Z: the mtime of every tar entry and the `created` of every config.
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"
GZIP_LEVEL = 6

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REF_NAME = "org.opencontainers.image.ref.name"

BUSYBOX_APPLETS = ["sh", "ls", "cat", "echo", "id", "ps", "true", "false",
                   "env", "sleep", "touch", "stat"]

HELLO = b'#!/bin/sh\necho "hello from boxrun tiny image"\n'
OS_RELEASE = b'NAME="boxrun tiny"\nID=boxrun-tiny\nPRETTY_NAME="boxrun tiny test image"\n'
# The same length as HELLO, for a file a later layer rewrites with the same size and mtime.
HELLO_CHILD = b'#!/bin/sh\necho "hello from boxrun tiny child"\n'
TOOL_SCRIPT = b'#!/bin/sh\necho "uid=$(id -u) gid=$(id -g)"\n'

VERBOSE = False


def log(msg):
    if VERBOSE:
        print(msg, file=sys.stderr)


# ---------------------------------------------------------------- tar entries
# An entry is a tuple; the layer's list order is the tar order.

def d(name, mode=0o755):
    return ("dir", name, mode)


def f(name, data, mode=0o644):
    return ("file", name, mode, data)


def sym(name, target):
    return ("symlink", name, 0o777, target)


def hard(name, target):
    return ("hardlink", name, 0o644, target)


def whiteout(name):
    """A whiteout or opaque marker: an empty regular file (as docker writes them)."""
    return ("file", name, 0o644, b"")


def tarinfo(e):
    """A TarInfo (and its data) for an entry tuple, its name exactly as given: no
    normalisation, so mkhostile.py can write names that climb or start with '/'."""
    kind, name, mode = e[0], e[1], e[2]
    ti = tarfile.TarInfo()
    ti.name = name
    ti.mode = mode
    ti.mtime = EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    data = None
    if kind == "dir":
        ti.type = tarfile.DIRTYPE  # tarfile appends the trailing '/'
    elif kind == "file":
        ti.type = tarfile.REGTYPE
        data = e[3]
        ti.size = len(data)
    elif kind in ("symlink", "hardlink"):
        ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        ti.linkname = e[3]
    elif kind in ("char", "block"):
        ti.type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = e[3], e[4]
    elif kind == "fifo":
        ti.type = tarfile.FIFOTYPE
    else:
        raise ValueError(kind)
    return ti, data


def make_tar(entries):
    """Uncompressed tar bytes for a list of entries, in list order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for e in entries:
            ti, data = tarinfo(e)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    # filename="" and mtime=0: no name field, no timestamp in the header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out,
                       compresslevel=GZIP_LEVEL, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- layouts

class Layout:
    """One OCI image layout directory."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"))
        with open(os.path.join(path, "oci-layout"), "wb") as fh:
            fh.write(dump({"imageLayoutVersion": "1.0.0"}))

    def blob(self, media_type, data, **extra):
        """Store a blob, return its descriptor."""
        digest = sha256(data)
        p = os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])
        if not os.path.exists(p):
            with open(p, "wb") as fh:
                fh.write(data)
        desc = {"mediaType": media_type, "digest": digest, "size": len(data)}
        desc.update(extra)
        return desc

    def finish(self, top_desc):
        top = dict(top_desc)
        top["annotations"] = {REF_NAME: "latest"}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}
        with open(os.path.join(self.path, "index.json"), "wb") as fh:
            fh.write(dump(index))
        log("  %s: %s %s" % (os.path.basename(self.path), top["mediaType"], top["digest"]))


def dump(obj):
    """Compact JSON, no trailing newline (as Go's json.Marshal writes it)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def zstd_bytes(data):
    """zstd at a fixed level: deterministic for one zstd version (Debian's `zstd` CLI)."""
    if shutil.which("zstd") is None:
        sys.exit("mkimages.py: zstd not found: apt-get install zstd")
    return subprocess.run(["zstd", "-q", "-19", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


class Layer:
    """A layer; `label` overrides its media type (to test registries that lie about it)."""

    def __init__(self, entries, compressed=True, comment="", zstd=False, label=None):
        self.tar = make_tar(entries)
        self.diff_id = sha256(self.tar)
        self.compressed = compressed
        if zstd:
            self.blob, self.media_type = zstd_bytes(self.tar), OCI_LAYER_ZSTD
        elif compressed:
            self.blob, self.media_type = gzip_bytes(self.tar), OCI_LAYER_GZIP
        else:
            self.blob, self.media_type = self.tar, OCI_LAYER_TAR
        self.media_type = label or self.media_type
        self.comment = comment


def image(layout, layers, cmd, arch, variant=None, docker=False, annotations=None,
          tool="mkimages.py"):
    """Write config + manifest for `layers` into `layout`; return the manifest descriptor.

    `tool` names the script in each history entry's created_by."""
    config = {
        "created": CREATED,
        "architecture": arch,
    }
    if variant:
        config["variant"] = variant
    config["os"] = "linux"
    config["config"] = {"Env": [PATH_ENV], "Cmd": cmd}
    config["rootfs"] = {"type": "layers", "diff_ids": [l.diff_id for l in layers]}
    config["history"] = [{"created": CREATED, "created_by": "boxrun images/%s: %s" % (tool, l.comment)}
                         for l in layers]
    cfg_desc = layout.blob(DOCKER_CONFIG if docker else OCI_CONFIG, dump(config))
    layer_descs = []
    for l in layers:
        if docker:
            if not l.compressed:
                raise ValueError("docker schema2 images here use gzip layers only")
            mt = DOCKER_LAYER_GZIP
        else:
            mt = l.media_type
        layer_descs.append(layout.blob(mt, l.blob))
    if docker:
        # Docker's own key order (mediaType, size, digest): then
        #   skopeo copy --format v2s2 oci:OUT/tiny:latest docker://HOST/tiny-docker:latest
        # pushes a manifest byte-identical to this one (skopeo will not read a Docker
        # manifest out of an oci: layout itself).
        cfg_desc = docker_order(cfg_desc)
        layer_descs = [docker_order(x) for x in layer_descs]
    manifest = {"schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                "config": cfg_desc,
                "layers": layer_descs}
    if annotations:
        manifest["annotations"] = annotations
    return layout.blob(manifest["mediaType"], dump(manifest))


def docker_order(desc):
    return {"mediaType": desc["mediaType"], "size": desc["size"], "digest": desc["digest"]}


def host_platform():
    m = platform.machine()
    table = {"x86_64": ("amd64", None), "amd64": ("amd64", None),
             "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
             "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
             "riscv64": ("riscv64", None), "i686": ("386", None), "i386": ("386", None)}
    if m not in table:
        raise SystemExit("mkimages.py: unknown machine %r" % m)
    return table[m]


# ---------------------------------------------------------------- recipes

def tiny_entries(busybox):
    """The tiny image's one layer, in sorted order (directories before their contents)."""
    entries = [
        d("bin"),
        f("bin/busybox", busybox, 0o755),
    ]
    entries += [sym("bin/" + a, "busybox") for a in sorted(BUSYBOX_APPLETS)]
    entries += [
        d("dev"),
        d("etc"),
        f("etc/os-release", OS_RELEASE),
        f("hello", HELLO, 0o755),
        d("home"),
        d("proc"),
        d("root", 0o700),
        d("sys"),
        d("tmp", 0o1777),
        d("var"),
        d("var/tmp", 0o1777),
    ]
    return entries


def merge_sorted(base, extra):
    """base + extra ordered by path components, so that each directory precedes its contents."""
    def key(e):
        return e[1].rstrip("/").split("/")
    names = set()
    for e in base + extra:
        if e[1] in names:
            raise ValueError("duplicate entry " + e[1])
        names.add(e[1])
    return sorted(base + extra, key=key)


def layered_layers(busybox):
    l1 = merge_sorted(tiny_entries(busybox), [
        f("etc/deleted-later", b"this file is deleted by layer 2\n"),
        d("opt"),
        d("opt/opaque"),
        f("opt/opaque/lower-a", b"lower-a\n"),
        f("opt/opaque/lower-b", b"lower-b\n"),
        d("opt/was-dir"),
        f("opt/was-dir/child", b"child of a directory that layer 4 replaces with a file\n"),
        d("srv"),
        d("srv/ro", 0o555),          # before its file, and read-only
        f("srv/ro/inside", b"inside a read-only directory\n"),
        d("usr"),
        d("usr/bin"),
        f("usr/bin/setgid-tool", TOOL_SCRIPT, 0o2755),
        f("usr/bin/setuid-tool", TOOL_SCRIPT, 0o4755),
        d("usr/share"),
        f("usr/share/data.txt", b"shared data\n"),
    ])
    # Layer 2: explicit order. The opaque marker comes before the new file in the
    # same directory; the hard link's target comes before the hard link.
    l2 = [
        d("etc"),
        whiteout("etc/.wh.deleted-later"),
        d("opt"),
        d("opt/opaque"),
        whiteout("opt/opaque/.wh..wh..opq"),
        f("opt/opaque/upper", b"upper\n"),
        d("run"),
        d("usr"),
        d("usr/share"),
        f("usr/share/data.txt", b"shared data\n"),
        hard("usr/share/data-hardlink", "usr/share/data.txt"),
        sym("usr/share/data-symlink", "data.txt"),
        d("var"),
        sym("var/run", "/run"),
    ]
    # Layer 3 (plain tar): var/run/pidfile goes *through* layer 2's absolute
    # symlink var/run -> /run; there is deliberately no var/run/ entry here.
    l3 = [
        d("etc"),
        f("etc/layer3", b"3\n"),
        d("var"),
        f("var/run/pidfile", b"42\n"),
    ]
    # Layer 4: a plain file replaces layer 1's directory opt/was-dir (no whiteout).
    l4 = [
        d("etc"),
        f("etc/motd", b"layered image\n"),
        d("opt"),
        f("opt/was-dir", b"was a directory\n"),
    ]
    return [
        Layer(l1, comment="layer 1: tiny + lower files, setuid/setgid, read-only dir"),
        Layer(l2, comment="layer 2: whiteout, opaque dir, hard link, symlinks"),
        Layer(l3, compressed=False, comment="layer 3 (uncompressed): write through var/run symlink"),
        Layer(l4, comment="layer 4: file replaces directory"),
    ]


def build(out, busybox):
    arch, variant = host_platform()

    tiny_layer = Layer(tiny_entries(busybox), comment="busybox, /hello")

    # 1. tiny
    lay = Layout(os.path.join(out, "tiny"))
    lay.finish(image(lay, [tiny_layer], ["/hello"], arch, variant))

    # 2. layered
    lay = Layout(os.path.join(out, "layered"))
    lay.finish(image(lay, layered_layers(busybox), ["/bin/sh"], arch, variant))

    # 3. multiarch: index.json -> one index blob -> two platform manifests.
    #    Both share tiny's layer blob as layer 1 (it holds the *host's* busybox).
    lay = Layout(os.path.join(out, "multiarch"))
    manifests = []
    for a, v in (("amd64", None), ("arm64", "v8")):
        arch_layer = Layer([d("etc"), f("etc/boxrun-arch", (a + "\n").encode())],
                           comment="/etc/boxrun-arch")
        desc = image(lay, [tiny_layer, arch_layer], ["/bin/cat", "/etc/boxrun-arch"], a, v)
        plat = {"architecture": a, "os": "linux"}
        if v:
            plat["variant"] = v
        desc["platform"] = plat
        manifests.append(desc)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    lay.finish(lay.blob(OCI_INDEX, dump(index)))

    # 4. tiny-docker: tiny's content with Docker schema2 media types.
    lay = Layout(os.path.join(out, "tiny-docker"))
    lay.finish(image(lay, [tiny_layer], ["/hello"], arch, variant, docker=True))

    # 5. tiny-zstd: tiny's content in a zstd layer.
    lay = Layout(os.path.join(out, "tiny-zstd"))
    zstd_layer = Layer(tiny_entries(busybox), comment="busybox, /hello (zstd)", zstd=True)
    lay.finish(image(lay, [zstd_layer], ["/hello"], arch, variant))

    # 6. tiny-mislabeled: tiny's gzip layer, declared as an uncompressed tar.
    lay = Layout(os.path.join(out, "tiny-mislabeled"))
    lying_layer = Layer(tiny_entries(busybox), comment="gzip labelled as tar", label=OCI_LAYER_TAR)
    lay.finish(image(lay, [lying_layer], ["/hello"], arch, variant))

    # 7. tiny-child: tiny's layer, then one that rewrites /hello (same size and mtime, other
    #    bytes) and adds a file: the files it shares with tiny are shared on disk, /hello not.
    lay = Layout(os.path.join(out, "tiny-child"))
    assert len(HELLO_CHILD) == len(HELLO)
    child_layer = Layer([d("etc"), f("etc/child", b"child\n"), f("hello", HELLO_CHILD, 0o755)],
                        comment="/hello rewritten, /etc/child")
    lay.finish(image(lay, [tiny_layer, child_layer], ["/hello"], arch, variant))


def main(argv):
    global VERBOSE
    args = list(argv)
    busybox_path = "/bin/busybox"
    if args and args[0] == "-v":
        VERBOSE = True
        args.pop(0)
    if len(args) >= 2 and args[0] == "--busybox":
        busybox_path = args[1]
        del args[:2]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = args[0]
    with open(busybox_path, "rb") as fh:
        busybox = fh.read()
    os.makedirs(out, exist_ok=True)
    build(out, busybox)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Build boxrun's HOSTILE test images as OCI image layouts, deterministically.

Usage: mkhostile.py [-v] [--busybox PATH] [--reuse OLDOUT] OUTDIR

Writes OUTDIR/hostile-* (see IMAGES below; images/hostile.expect says what a correct
extractor must make of each). Every image is layer 1, the very blob of the `tiny`
image's busybox layer, then one or more hostile layers whose tar entries carry names
and link targets that ordinary tools refuse to write: `../` escapes, absolute paths,
writes through symlinks, hard links out of the rootfs, whiteouts aimed outside it,
10000 nested directories, symlink loops, device nodes, and a decompression bomb.

Escapes aim only at the fixed host directory /tmp/boxrun-victim (which the tests fill
with canaries), at the rootfs's parent directory (`./../escape-dotdot`, `.wh..`), and
at the host's /etc/passwd through a hard link (never written): nothing else on the host.

The bomb (8 GiB of zeros) takes seconds to make, so with --reuse OLDOUT its layer blob
is taken from OLDOUT/hostile-bomb when that image was made by the same recipe (its
config's history names BOMB_RECIPE) and the blob still matches its digest.

Called by build.sh after mkimages.py, into the same temporary directory. Names are
written raw (TarInfo.name set directly); layers use the PAX format, so a name over
100 bytes or a size of 8 GiB gets a PAX record. Same determinism rules as mkimages.py.
Python 3 standard library only.
"""

import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import time
import zlib

sys.dont_write_bytecode = True  # no images/__pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mkimages as mk  # noqa: E402  (the images' shared helpers: entries, layouts, configs)
from mkimages import d, f, hard, sym, whiteout  # noqa: E402

TOOL = "mkhostile.py"
CMD = ["/bin/sh"]
PWNED = b"pwned\n"

# The host directory the escapes aim at; the tests create it with canaries.
VICTIM = "tmp/boxrun-victim"
# Enough `../` to climb from a rootfs up to 24 directories deep to the host's /.
UP = "../" * 24

DEEP_LEVELS = 10000

BOMB_SIZE = 8 << 30          # the file's declared (and real) size: 8 GiB of zeros
BOMB_CHUNK = 1 << 20         # a full flush after every MiB: the deflate block repeats
BOMB_LEVEL = 9
# Change the version whenever the bomb layer's bytes would change: --reuse compares it.
BOMB_RECIPE = ("hostile-bomb recipe v1: /zeros, %d bytes of zeros (PAX size record), "
               "gzip -%d with a full flush every %d bytes" % (BOMB_SIZE, BOMB_LEVEL, BOMB_CHUNK))


# ---------------------------------------------------------------- tar entries
# mkimages.py's entry tuples (d, f, sym, hard, whiteout), plus these.

def chardev(name, major, minor, mode=0o666):
    return ("char", name, mode, major, minor)


def blockdev(name, major, minor, mode=0o660):
    return ("block", name, mode, major, minor)


def fifo(name, mode=0o644):
    return ("fifo", name, mode)


tarinfo = mk.tarinfo


class _Sink:
    """A write-only file for tarfile: hashes the tar as it goes (diff_id) and gzips it."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.size = 0
        self.out = io.BytesIO()
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.out,
                                compresslevel=mk.GZIP_LEVEL, mtime=0)

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        self.gz.write(b)
        return len(b)

    def tell(self):
        return self.size


class Layer:
    """A gzip layer: what mkimages.image() needs (blob, diff_id, compressed, media_type, comment)."""

    def __init__(self, blob, diff_id, comment, tar_size):
        self.blob = blob
        self.diff_id = diff_id
        self.compressed = True
        self.media_type = mk.OCI_LAYER_GZIP
        self.comment = comment
        self.tar_size = tar_size


def hostile_layer(entries, comment):
    """Stream `entries` (a list or a generator) through tarfile and gzip, never holding the tar."""
    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti, data = tarinfo(e)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    sink.gz.close()
    return Layer(sink.out.getvalue(), "sha256:" + sink.sha.hexdigest(), comment, sink.size)


# ---------------------------------------------------------------- the bomb

def bomb_layer():
    """8 GiB of zeros in one tar entry, as an ~8 MiB gzip member, in a few seconds.

    The deflate stream is what zlib gives for: the tar header, a full flush, then each
    MiB of zeros followed by a full flush, then the rest and the end. A full flush resets
    the compressor (nothing after it refers back), so the block for one MiB of zeros is
    the same bytes every time: it is compressed once and repeated. The diff_id (sha256)
    and the gzip CRC still go over every uncompressed byte, a MiB at a time.
    """
    ti, _ = tarinfo(f("zeros", b""))
    ti.size = BOMB_SIZE  # 8 GiB does not fit the 11 octal digits of ustar: a PAX size record
    header = ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    # tarfile's end of archive: two zero blocks, then zeros up to a whole record.
    end = BOMB_SIZE + 2 * tarfile.BLOCKSIZE
    end += -(len(header) + end) % tarfile.RECORDSIZE
    chunks, rest = divmod(end, BOMB_CHUNK)   # everything after the header is zeros

    co = zlib.compressobj(BOMB_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(BOMB_CHUNK)
    block = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    if again != block:  # the repetition relies on it; zlib has always done so
        raise SystemExit("mkhostile.py: zlib's output for a flushed MiB of zeros is not stable")
    tail = co.compress(bytes(rest)) + co.flush(zlib.Z_FINISH)

    sha = hashlib.sha256(header)
    crc = zlib.crc32(header)
    for _ in range(chunks):
        sha.update(zeros)
        crc = zlib.crc32(zeros, crc)
    sha.update(bytes(rest))
    crc = zlib.crc32(bytes(rest), crc)
    total = len(header) + end

    # The gzip header as Python's gzip module writes it at level 9: no name, mtime 0.
    blob = b"".join([b"\x1f\x8b\x08\x00", struct.pack("<I", 0), b"\x02\xff",
                     head, block * chunks, tail,
                     struct.pack("<II", crc, total & 0xFFFFFFFF)])
    return Layer(blob, "sha256:" + sha.hexdigest(), BOMB_RECIPE, total)


def reused_bomb_layer(old_layout):
    """The bomb layer of an earlier build by the same recipe, or None."""
    def blob(desc):
        hexd = desc["digest"].split(":", 1)[1]
        with open(os.path.join(old_layout, "blobs", "sha256", hexd), "rb") as fh:
            data = fh.read()
        if mk.sha256(data) != desc["digest"] or len(data) != desc["size"]:
            raise ValueError("blob %s is damaged" % desc["digest"])
        return data
    try:
        with open(os.path.join(old_layout, "index.json"), "rb") as fh:
            index = json.load(fh)
        manifest = json.loads(blob(index["manifests"][0]))
        config = json.loads(blob(manifest["config"]))
        if not config["history"][-1]["created_by"].endswith(": " + BOMB_RECIPE):
            return None
        desc = manifest["layers"][-1]
        if desc["mediaType"] != mk.OCI_LAYER_GZIP:
            return None
        data = blob(desc)
        diff_id = config["rootfs"]["diff_ids"][-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return Layer(data, diff_id, BOMB_RECIPE, None)


# ---------------------------------------------------------------- recipes

def deep_entries():
    """d/, d/d/, ... 10000 levels (names up to 20000 bytes: PAX path records), a file at the bottom."""
    path = "d/" * DEEP_LEVELS
    for i in range(1, DEEP_LEVELS + 1):
        yield d(path[:2 * i - 1])
    yield f(path + "bottom", b"bottom\n")


def recipes():
    """(image name, [(entries, comment), ...] for the layers after the busybox one)."""
    victim_up = UP + VICTIM
    return [
        ("hostile-dotdot", [
            ([d(victim_up, 0o777),   # a naive extractor would chmod the host's victim dir
              f(victim_up + "/dotdot", PWNED),
              f("./../escape-dotdot", PWNED)],
             "names that climb out with ../"),
        ]),
        ("hostile-absolute", [
            ([f("/" + VICTIM + "/absolute", PWNED),   # its parent is not in the image
              d("/" + VICTIM + "/absdir"),
              f("/" + VICTIM + "/absdir/inside", PWNED)],
             "absolute names"),
        ]),
        ("hostile-symlink-write", [
            ([d("tmp", 0o1777),
              d(VICTIM),              # the symlinks' targets exist inside the image
              sym("evil", "/" + VICTIM),
              sym("evil-rel", victim_up),
              f("evil/same-layer", PWNED)],
             "symlinks to /tmp/boxrun-victim, a write through one in the same layer"),
            ([f("evil/through-abs", PWNED),
              f("evil-rel/through-rel", PWNED)],
             "writes through the lower layer's symlinks"),
        ]),
        ("hostile-hardlink-out", [
            ([d("etc"),
              f("etc/passwd", b"image passwd\n"),
              hard("passwd-link", "/etc/passwd"),
              hard("passwd-link-rel", UP + "etc/passwd")],
             "hard links whose targets name the host's /etc/passwd"),
        ]),
        ("hostile-hardlink-missing", [
            ([hard("victim-link", victim_up + "/canary")],
             "a hard link to a file that is only on the host"),
        ]),
        ("hostile-whiteout", [
            ([f("after-root-opaque", b"after root opaque\n"),
              d("etc"),
              whiteout("etc/.wh..wh..opq"),
              d("tmp", 0o1777),
              d(VICTIM),
              f(VICTIM + "/canary", b"image decoy\n"),
              f(VICTIM + "/canary2", b"image decoy\n"),
              f(VICTIM + "/keep", b"image keep\n"),
              # Last: the opaque marker hides the lower layers only, never this layer's entries.
              whiteout(".wh..wh..opq")],
             "root opaque marker, decoy canaries inside the image"),
            ([whiteout(victim_up + "/.wh.canary"),
              whiteout("/" + VICTIM + "/.wh.canary2")],
             "whiteouts aimed at the host's canaries"),
        ]),
        ("hostile-whiteout-dotdot", [
            ([whiteout(".wh..")],
             "a whiteout of '..'"),
        ]),
        ("hostile-deep", [
            (deep_entries(), "%d nested directories" % DEEP_LEVELS),
        ]),
        ("hostile-symlink-loop", [
            ([sym("loop-a", "loop-b"),
              sym("loop-b", "loop-a"),
              f("loop-a/x", PWNED),
              sym("self", "self"),
              f("self/y", PWNED)],
             "symlink loops, written through"),
        ]),
        ("hostile-device", [
            ([d("dev"),
              chardev("dev/evil-null", 1, 3),
              blockdev("dev/evil-sda", 8, 0),
              d("run"),
              fifo("run/fifo"),
              f("ok", b"ok\n")],
             "device nodes and a fifo"),
        ]),
    ]


IMAGES = [name for name, _ in recipes()] + ["hostile-bomb"]


def build(out, busybox, reuse=None):
    arch, variant = mk.host_platform()
    # The same bytes as mkimages.py's tiny layer, so the same blob.
    base = mk.Layer(mk.tiny_entries(busybox), comment="busybox, /hello")

    for name, layers in recipes():
        lay = mk.Layout(os.path.join(out, name))
        built = [hostile_layer(entries, comment) for entries, comment in layers]
        lay.finish(mk.image(lay, [base] + built, CMD, arch, variant, tool=TOOL))

    started = time.monotonic()
    bomb = reused_bomb_layer(os.path.join(reuse, "hostile-bomb")) if reuse else None
    how = "reused from " + reuse if bomb else "built"
    if bomb is None:
        bomb = bomb_layer()
    mk.log("  hostile-bomb: layer %s in %.1f s: %d bytes of gzip, diff_id %s"
           % (how, time.monotonic() - started, len(bomb.blob), bomb.diff_id))
    lay = mk.Layout(os.path.join(out, "hostile-bomb"))
    lay.finish(mk.image(lay, [base, bomb], CMD, arch, variant, tool=TOOL))


def main(argv):
    args = list(argv)
    busybox_path = "/bin/busybox"
    reuse = None
    if args and args[0] == "-v":
        mk.VERBOSE = True
        args.pop(0)
    while len(args) >= 2 and args[0] in ("--busybox", "--reuse"):
        if args[0] == "--busybox":
            busybox_path = args[1]
        else:
            reuse = args[1]
        del args[:2]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = args[0]
    with open(busybox_path, "rb") as fh:
        busybox = fh.read()
    os.makedirs(out, exist_ok=True)
    build(out, busybox, reuse)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Check an OCI image layout built by images/build.sh (or any other).

Usage: check_layout.py [-v] LAYOUT [--expect FILE]
       check_layout.py [-v] --rootfs DIR --expect FILE

Checks, independently of skopeo: oci-layout and index.json; the `latest` ref name;
every blob reachable from index.json (indexes, manifests, configs, layers) exists and
matches its descriptor's digest and size; media types fit together (OCI or Docker
schema2, not mixed within a manifest); each config's rootfs.diff_ids are the sha256 of
the *uncompressed* layers; platforms in an index match their configs.

With --expect (single-platform images), flattens the layers in memory with OCI
whiteout rules (.wh.NAME, .wh..wh..opq, hard links, names resolved through symlinks
inside the rootfs) and compares the tree with an expect file (see layered.expect).
With --rootfs, compares an unpacked directory on disk (boxrun's, umoci's) with the
expect file instead: type, mode, content, link target, shared inode.
Exit status 0 when all is well, 1 with one line per problem otherwise.
"""

import gzip
import hashlib
import json
import os
import posixpath
import sys
import tarfile
import io
import zlib

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json": (
        "application/vnd.oci.image.config.v1+json",
        {"application/vnd.oci.image.layer.v1.tar": None,
         "application/vnd.oci.image.layer.v1.tar+gzip": "gzip"}),
    "application/vnd.docker.distribution.manifest.v2+json": (
        "application/vnd.docker.container.image.v1+json",
        {"application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip"}),
}

problems = []
VERBOSE = False


def bad(msg):
    problems.append(msg)


def say(msg):
    if VERBOSE:
        print(msg)


def read_blob(layout, desc):
    digest = desc.get("digest", "")
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64:
        bad("%s: unsupported digest %r" % (layout, digest))
        return None
    path = os.path.join(layout, "blobs", "sha256", hexd)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        bad("%s: missing blob %s: %s" % (layout, digest, e))
        return None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        bad("%s: blob %s has the wrong content" % (layout, digest))
    if desc.get("size") != len(data):
        bad("%s: blob %s: descriptor size %r, blob is %d bytes"
            % (layout, digest, desc.get("size"), len(data)))
    return data


def check_manifest(layout, desc, platform=None):
    """Returns a list of uncompressed layer tars (bytes) for the manifest."""
    mt = desc["mediaType"]
    raw = read_blob(layout, desc)
    if raw is None:
        return None
    m = json.loads(raw)
    if m.get("schemaVersion") != 2:
        bad("%s: manifest schemaVersion %r" % (desc["digest"], m.get("schemaVersion")))
    if m.get("mediaType", mt) != mt:
        bad("%s: manifest mediaType %r, descriptor says %r" % (desc["digest"], m.get("mediaType"), mt))
    config_type, layer_types = MANIFEST_TYPES[mt]
    if m["config"]["mediaType"] != config_type:
        bad("%s: config mediaType %r in a %s" % (desc["digest"], m["config"]["mediaType"], mt))
    config_raw = read_blob(layout, m["config"])
    if config_raw is None:
        return None
    config = json.loads(config_raw)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if config.get("rootfs", {}).get("type") != "layers":
        bad("%s: rootfs.type is not 'layers'" % m["config"]["digest"])
    if len(diff_ids) != len(m["layers"]):
        bad("%s: %d layers but %d diff_ids" % (desc["digest"], len(m["layers"]), len(diff_ids)))
    if "history" in config:
        real = [h for h in config["history"] if not h.get("empty_layer")]
        if len(real) != len(m["layers"]):
            bad("%s: %d non-empty history entries for %d layers"
                % (m["config"]["digest"], len(real), len(m["layers"])))
    if platform:
        for k in ("architecture", "os", "variant"):
            if platform.get(k) != config.get(k):
                bad("%s: index platform %s=%r, config says %r"
                    % (desc["digest"], k, platform.get(k), config.get(k)))
    tars = []
    for i, ld in enumerate(m["layers"]):
        if ld["mediaType"] not in layer_types:
            bad("%s: layer %d mediaType %r in a %s" % (desc["digest"], i, ld["mediaType"], mt))
            return None
        blob = read_blob(layout, ld)
        if blob is None:
            return None
        if layer_types[ld["mediaType"]] == "gzip":
            if blob[:2] != b"\x1f\x8b":
                bad("%s: layer %d is not gzip" % (desc["digest"], i))
                return None
            try:
                tar = gzip.decompress(blob)
            except (OSError, EOFError, zlib.error) as e:
                bad("%s: layer %d (%s): bad gzip: %s" % (desc["digest"], i, ld["digest"], e))
                return None
        else:
            tar = blob
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        if i < len(diff_ids) and diff_ids[i] != diff_id:
            bad("%s: layer %d diff_id %s, uncompressed sha256 is %s"
                % (desc["digest"], i, diff_ids[i], diff_id))
        tars.append(tar)
    say("ok %s %s (%s/%s, %d layers)" % (mt, desc["digest"], config.get("architecture"),
                                         config.get("os"), len(tars)))
    return tars


def check_layout(layout):
    """Returns {platform-string: [layer tars]} for every image in the layout."""
    images = {}
    try:
        with open(os.path.join(layout, "oci-layout")) as fh:
            if json.load(fh).get("imageLayoutVersion") != "1.0.0":
                bad("%s: oci-layout imageLayoutVersion is not 1.0.0" % layout)
        with open(os.path.join(layout, "index.json")) as fh:
            index = json.load(fh)
    except (OSError, ValueError) as e:
        bad("%s: %s" % (layout, e))
        return images
    tagged = [d for d in index.get("manifests", [])
              if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"]
    if len(tagged) != 1:
        bad("%s: index.json has %d entries named 'latest', want 1" % (layout, len(tagged)))
    for top in index.get("manifests", []):
        if top["mediaType"] in INDEX_TYPES:
            raw = read_blob(layout, top)
            if raw is None:
                continue
            sub = json.loads(raw)
            if sub.get("mediaType", top["mediaType"]) != top["mediaType"]:
                bad("%s: index mediaType %r, descriptor says %r"
                    % (top["digest"], sub.get("mediaType"), top["mediaType"]))
            say("ok %s %s (%d manifests)" % (top["mediaType"], top["digest"], len(sub["manifests"])))
            for d in sub["manifests"]:
                p = d.get("platform")
                if not p:
                    bad("%s: index entry %s has no platform" % (top["digest"], d["digest"]))
                    continue
                key = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
                images[key] = check_manifest(layout, d, p)
        elif top["mediaType"] in MANIFEST_TYPES:
            images["default"] = check_manifest(layout, top)
        else:
            bad("%s: unknown mediaType %r in index.json" % (layout, top["mediaType"]))
    return images


# ---------------------------------------------------------------- flattening

class Tree:
    """A rootfs in memory: path ('/a/b') -> node dict."""

    def __init__(self):
        self.nodes = {"/": {"type": "dir", "mode": 0o755}}
        self.next_inode = 1

    def resolve_parent(self, name):
        """Resolve every component but the last, following symlinks inside the tree."""
        parts = [p for p in name.strip("/").split("/") if p not in ("", ".")]
        cur = "/"
        for i, p in enumerate(parts[:-1]):
            if p == "..":
                cur = posixpath.dirname(cur) or "/"
                continue
            nxt = posixpath.join(cur, p)
            hops = 0
            while nxt in self.nodes and self.nodes[nxt]["type"] == "symlink":
                hops += 1
                if hops > 40:
                    raise ValueError("symlink loop at " + nxt)
                t = self.nodes[nxt]["target"]
                nxt = posixpath.normpath(t if t.startswith("/") else posixpath.join(cur, t))
                nxt = "/" + nxt.lstrip("/")
            if nxt not in self.nodes:
                self.nodes[nxt] = {"type": "dir", "mode": 0o755, "implicit": True}
            elif self.nodes[nxt]["type"] != "dir":
                raise ValueError("%s: parent %s is not a directory" % (name, nxt))
            cur = nxt
        return cur, (parts[-1] if parts else "")

    def remove(self, path):
        for p in [p for p in self.nodes if p == path or p.startswith(path.rstrip("/") + "/")]:
            del self.nodes[p]

    def apply(self, tar_bytes):
        added = set()
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for ti in tar:
                parent, base = self.resolve_parent(ti.name)
                if not base:
                    continue
                path = posixpath.join(parent, base)
                if base == ".wh..wh..opq":
                    for p in [p for p in self.nodes
                              if p.startswith(parent.rstrip("/") + "/") and p not in added]:
                        self.nodes.pop(p, None)
                    continue
                if base.startswith(".wh."):
                    self.remove(posixpath.join(parent, base[4:]))
                    continue
                mode = ti.mode & 0o7777
                old = self.nodes.get(path)
                if ti.isdir():
                    if old and old["type"] == "dir":
                        old["mode"] = mode
                        old.pop("implicit", None)
                    else:
                        self.remove(path)
                        self.nodes[path] = {"type": "dir", "mode": mode}
                elif ti.isfile():
                    self.remove(path)
                    self.nodes[path] = {"type": "file", "mode": mode,
                                        "data": tar.extractfile(ti).read(),
                                        "inode": self.next_inode}
                    self.next_inode += 1
                elif ti.issym():
                    self.remove(path)
                    self.nodes[path] = {"type": "symlink", "mode": 0o777, "target": ti.linkname}
                elif ti.islnk():
                    tparent, tbase = self.resolve_parent(ti.linkname)
                    target = self.nodes.get(posixpath.join(tparent, tbase))
                    if not target or target["type"] != "file":
                        raise ValueError("%s: hard link to missing %s" % (ti.name, ti.linkname))
                    self.remove(path)
                    self.nodes[path] = target  # the same object: the same inode
                else:
                    raise ValueError("%s: unsupported tar entry type %r" % (ti.name, ti.type))
                added.add(path)


def tree_from_disk(root):
    import stat
    tree = Tree()
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            path = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                tree.nodes[path] = {"type": "dir", "mode": mode}
            elif stat.S_ISLNK(st.st_mode):
                tree.nodes[path] = {"type": "symlink", "mode": mode, "target": os.readlink(full)}
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key not in inodes:
                    with open(full, "rb") as fh:
                        inodes[key] = {"type": "file", "mode": mode, "data": fh.read()}
                tree.nodes[path] = inodes[key]
            else:
                tree.nodes[path] = {"type": "other", "mode": mode}
    return tree


def unescape(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append({"n": "\n", "\\": "\\", "t": "\t"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out).encode()


def compare(tree, expect_path):
    seen = set()
    with open(expect_path) as fh:
        lines = fh.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(" ", 3)
        if len(fields) != 4:
            bad("%s:%d: want 4 fields: %r" % (expect_path, n, line))
            continue
        path, typ, mode, detail = fields
        node = tree.nodes.get(path)
        where = "%s:%d: %s" % (expect_path, n, path)
        if typ == "absent":
            if node is not None:
                bad("%s: should be absent, is a %s" % (where, node["type"]))
            continue
        seen.add(path)
        if node is None:
            bad("%s: missing" % where)
            continue
        want_type = "file" if typ == "hardlink" else typ
        if node["type"] != want_type:
            bad("%s: is a %s, want %s" % (where, node["type"], typ))
            continue
        if "%04o" % node["mode"] != mode:
            bad("%s: mode %04o, want %s" % (where, node["mode"], mode))
        if typ == "file":
            if detail.startswith("text:"):
                want = unescape(detail[5:])
            elif detail.startswith("host:"):
                with open(detail[5:], "rb") as fh:
                    want = fh.read()
            else:
                bad("%s: bad detail %r" % (where, detail))
                continue
            if node["data"] != want:
                bad("%s: content %r, want %r" % (where, node["data"][:80], want[:80]))
        elif typ == "symlink":
            if node["target"] != detail:
                bad("%s: target %r, want %r" % (where, node["target"], detail))
        elif typ == "hardlink":
            if tree.nodes.get(detail) is not node:
                bad("%s: not the same inode as %s" % (where, detail))
    for p in sorted(set(tree.nodes) - seen - {"/"}):
        bad("%s: %s is in the tree but not in the expect file" % (expect_path, p))


def main(argv):
    global VERBOSE
    args = list(argv)
    if args and args[0] == "-v":
        VERBOSE = True
        args.pop(0)
    expect = None
    if "--expect" in args:
        i = args.index("--expect")
        expect = args[i + 1]
        del args[i:i + 2]
    if "--rootfs" in args:
        i = args.index("--rootfs")
        root = args[i + 1]
        del args[i:i + 2]
        if args or not expect:
            print(__doc__.strip().splitlines()[3], file=sys.stderr)
            return 2
        compare(tree_from_disk(root), expect)
        for p in problems:
            print("check_layout: " + p, file=sys.stderr)
        say("ok %s matches %s" % (root, expect) if not problems else "")
        return 1 if problems else 0
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    layout = args[0]
    images = check_layout(layout)
    if expect and not problems:
        if list(images) != ["default"]:
            bad("%s: --expect needs a single-platform image" % layout)
        else:
            tree = Tree()
            try:
                for tar in images["default"]:
                    tree.apply(tar)
            except (ValueError, tarfile.TarError) as e:
                bad("%s: %s" % (layout, e))
            else:
                compare(tree, expect)
                say("ok %s matches %s" % (layout, expect))
    for p in problems:
        print("check_layout: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Build the `mpi` test image: Debian's Open MPI libraries and an MPI job, as an OCI layout.

Usage: mkmpi.py [-v] --busybox PATH --app BINARY OUTDIR

Three layers: busybox (a shell), the files of Debian's libopenmpi3 and openmpi-common with
their installed dependency closure (taken from this host's dpkg database, so the ranks' Open
MPI matches the host's mpirun and Slurm's PMIx), and BINARY as /usr/local/bin/allreduce
(images/mpi/allreduce.c, built with mpicc). A merged-/usr layout, as Debian 12's. The image's
Cmd is the allreduce. Deterministic for one set of installed package versions.
"""

import argparse
import os
import re
import stat
import subprocess
import sys

import mkimages as mk

# The MPI runtime: libraries, plugins, help texts and MCA defaults.
ROOTS = ["libopenmpi3", "openmpi-common"]
# Dependencies a container does not need (maintainer-script tools, optional hwloc plugins).
SKIP = {"adduser", "debconf", "passwd", "libhwloc-plugins", "ocl-icd-libopencl1", "perl-base"}
# Documentation is not part of a runtime.
DROP = ("usr/share/doc/", "usr/share/man/", "usr/share/locale/", "usr/share/lintian/", "usr/share/info/")
MERGED = ("bin", "sbin", "lib", "lib32", "lib64")


def dpkg(fmt, package):
    out = subprocess.run(["dpkg-query", "-W", "-f=" + fmt, package],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return out.stdout if out.returncode == 0 else ""


def installed(package):
    return "ok installed" in dpkg("${Status}", package)


def closure(roots):
    """The installed packages `roots` depend on, transitively (first installed alternative)."""
    seen, todo = set(), list(roots)
    while todo:
        package = todo.pop()
        if package in seen or package in SKIP:
            continue
        if not installed(package):
            sys.exit("mkmpi.py: %s is not installed: apt-get install openmpi-bin libopenmpi-dev" % package)
        seen.add(package)
        for group in dpkg("${Depends}, ${Pre-Depends}", package).split(","):
            alternatives = [re.sub(r"\(.*?\)|\[.*?\]|:any", "", a).strip() for a in group.split("|")]
            choice = next((a for a in alternatives if a and installed(a)), None)
            if choice:
                todo.append(choice)
    return sorted(seen)


def image_path(path):
    """A package path as it sits in a merged-/usr image (lib/x → usr/lib/x)."""
    rel = path.lstrip("/")
    top = rel.split("/", 1)[0]
    return "usr/" + rel if top in MERGED else rel


def package_entries(packages):
    entries = {}
    for package in packages:
        for path in subprocess.run(
                ["dpkg", "-L", package], stdout=subprocess.PIPE, text=True, check=True).stdout.splitlines():
            name = image_path(path)
            if path.strip("/") in MERGED + ("", "."):
                continue  # /lib itself: on a merged-/usr host a symlink, made in the base layer
            if name.startswith(DROP) or name in entries:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # a diverted or removed conffile
            mode = stat.S_IMODE(st.st_mode) & 0o777  # no setuid/setgid in a test image
            if stat.S_ISDIR(st.st_mode):
                entries[name] = mk.d(name, mode)
            elif stat.S_ISLNK(st.st_mode):
                entries[name] = mk.sym(name, os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    entries[name] = mk.f(name, fh.read(), mode)
    add_alternatives(entries)
    return with_parents(entries)


def add_alternatives(entries):
    """Links that maintainer scripts made with update-alternatives (libpsm_infinipath.so.1)
    are no package's files: add those in the image's library directories whose choice is in
    the image, pointing straight at it."""
    for directory in sorted({os.path.dirname(n) for n in entries if ".so" in n}):
        host = "/" + directory
        for name in sorted(os.listdir(host)) if os.path.isdir(host) else []:
            path = os.path.join(host, name)
            if os.path.islink(path) and os.readlink(path).startswith("/etc/alternatives/"):
                choice = image_path(os.path.realpath(path))
                if choice in entries:
                    entries.setdefault(directory + "/" + name, mk.sym(directory + "/" + name, "/" + choice))


def with_parents(entries):
    """Every entry's parent directories first, then the entries in path order."""
    for name in list(entries):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:i]), mk.d("/".join(parts[:i])))
    return [entries[name] for name in sorted(entries)]


def base_entries(busybox):
    with open(busybox, "rb") as fh:
        data = fh.read()
    entries = {"usr": mk.d("usr"), "usr/bin": mk.d("usr/bin"), "usr/sbin": mk.d("usr/sbin"),
               "usr/lib": mk.d("usr/lib"), "usr/lib64": mk.d("usr/lib64"),
               "usr/bin/busybox": mk.f("usr/bin/busybox", data, 0o755),
               "etc": mk.d("etc"), "tmp": mk.d("tmp", 0o1777), "proc": mk.d("proc"),
               "sys": mk.d("sys"), "dev": mk.d("dev"), "root": mk.d("root", 0o700),
               "etc/passwd": mk.f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
               "etc/group": mk.f("etc/group", b"root:x:0:\n")}
    for top in MERGED:
        entries[top] = mk.sym(top, "usr/" + top)
    entries["usr/lib32"] = mk.d("usr/lib32")
    for applet in mk.BUSYBOX_APPLETS + ["grep", "head", "wc", "hostname"]:
        entries["usr/bin/" + applet] = mk.sym("usr/bin/" + applet, "busybox")
    return [entries[name] for name in sorted(entries)]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", action="store_true")
    parser.add_argument("--busybox", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("outdir")
    args = parser.parse_args(argv)
    mk.VERBOSE = args.v
    packages = closure(ROOTS)
    mk.log("mpi: %d packages: %s" % (len(packages), " ".join(packages)))
    with open(args.app, "rb") as fh:
        app = fh.read()
    layers = [
        mk.Layer(base_entries(args.busybox), comment="busybox"),
        mk.Layer(package_entries(packages), comment="Debian packages " + " ".join(packages)),
        mk.Layer(with_parents({"usr/local/bin/allreduce": mk.f("usr/local/bin/allreduce", app, 0o755)}),
                 comment="images/mpi/allreduce.c"),
    ]
    arch, variant = mk.host_platform()
    layout = mk.Layout(os.path.join(args.outdir, "mpi"))
    layout.finish(mk.image(layout, layers, ["/usr/local/bin/allreduce"], arch, variant, tool="mkmpi.py"))


if __name__ == "__main__":
    main(sys.argv[1:])

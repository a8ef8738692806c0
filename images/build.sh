#!/usr/bin/env bash
# Build boxrun's test images as OCI image layouts under OUTDIR:
#   OUTDIR/tiny         busybox + /hello, one gzip layer
#   OUTDIR/layered      4 layers (one plain tar): whiteouts, opaque dir, links,
#                       setuid/setgid, read-only dir, write through a symlink;
#                       the flattened result is described by images/layered.expect
#   OUTDIR/multiarch    index.json -> image index -> linux/amd64 + linux/arm64/v8
#   OUTDIR/tiny-docker  tiny with Docker schema2 media types
#   OUTDIR/tiny-child   tiny's layer + one that rewrites /hello (same size and mtime)
#   OUTDIR/hostile-*    tiny's busybox layer + hostile layers for the extractor (escapes by
#                       ../, absolute names, symlinks, hard links and whiteouts, 10000 nested
#                       directories, symlink loops, devices, an 8 GiB gzip bomb), made by
#                       images/mkhostile.py; images/hostile.expect says what each must give
# Every layout tags its entry `latest`, e.g.
#   skopeo copy oci:OUTDIR/tiny:latest docker://HOST/tiny:latest
#   skopeo copy --all oci:OUTDIR/multiarch:latest docker://HOST/multiarch:latest
# Deterministic: the same /bin/busybox always gives the same digests.
# OUTDIR is built beside itself and renamed into place; an old OUTDIR is replaced, but
# its hostile-bomb layer (seconds to make) is reused when made by the same recipe.
#
# Usage: images/build.sh [-v] OUTDIR      (-v: say what was built)
# Needs: bash, python3 (standard library), /bin/busybox (Debian: busybox-static).
set -euo pipefail

usage() { echo "usage: $0 [-v] OUTDIR" >&2; exit 2; }

verbose=()
while [ $# -gt 0 ]; do
    case "$1" in
        -v) verbose=(-v); shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) echo "build.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || usage
out=${1%/}
[ -n "$out" ] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
busybox=${BOXRUN_BUSYBOX:-/bin/busybox}

if [ ! -f "$busybox" ] || [ ! -x "$busybox" ]; then
    echo "build.sh: $busybox not found: install a static busybox (apt-get install busybox-static)" >&2
    exit 1
fi
# The images run busybox inside a bare rootfs: it must be statically linked.
if command -v ldd >/dev/null 2>&1 && ldd "$busybox" >/dev/null 2>&1; then
    echo "build.sh: $busybox is dynamically linked: install busybox-static (apt-get install busybox-static)" >&2
    exit 1
fi
command -v python3 >/dev/null 2>&1 || { echo "build.sh: python3 not found" >&2; exit 1; }

tmp="$out.tmp.$$"
old="$out.old.$$"
cleanup() { rm -rf -- "$tmp" "$old"; }
trap cleanup EXIT
rm -rf -- "$tmp"

python3 "$here/mkimages.py" "${verbose[@]}" --busybox "$busybox" "$tmp"
python3 "$here/mkhostile.py" "${verbose[@]}" --busybox "$busybox" --reuse "$out" "$tmp"

if [ -e "$out" ] || [ -L "$out" ]; then
    mv -T -- "$out" "$old"
fi
mv -T -- "$tmp" "$out"
[ ${#verbose[@]} -eq 0 ] || echo "build.sh: built $out" >&2

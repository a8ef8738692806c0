#!/usr/bin/env bash
# Build the `mpi` test image as an OCI layout at OUTDIR/mpi (see images/mkmpi.py): Debian's
# Open MPI from this host's packages and images/mpi/allreduce.c built with mpicc. Built beside
# OUTDIR/mpi and renamed into place.
#
# Usage: images/mkmpi.sh [-v] OUTDIR
# Needs: python3, mpicc (libopenmpi-dev), Debian's openmpi-bin, /bin/busybox (busybox-static).
set -euo pipefail
verbose=()
[ "${1:-}" = -v ] && { verbose=(-v); shift; }
[ $# -eq 1 ] || { echo "usage: $0 [-v] OUTDIR" >&2; exit 2; }
out=${1%/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v mpicc >/dev/null || { echo "mkmpi.sh: mpicc not found: apt-get install libopenmpi-dev openmpi-bin" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d "$out/.mpi.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
mpicc -O2 -o "$tmp/allreduce" "$here/mpi/allreduce.c"
python3 "$here/mkmpi.py" "${verbose[@]}" --busybox "${BOXRUN_BUSYBOX:-/bin/busybox}" --app "$tmp/allreduce" "$tmp/layout"
rm -rf -- "$out/mpi"
mv "$tmp/layout/mpi" "$out/mpi"

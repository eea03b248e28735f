#!/bin/sh
# Build the visit-counter image on this machine, without a registry: a statically linked busybox
# plus the files in image/.
#
#   examples/visit-counter/build-image.sh [TAG]     default tag: headwater-examples/visit-counter:1
#
# BUSYBOX=/path/to/busybox picks another static busybox (Debian: apt-get install busybox-static).
set -eu
tag=${1:-headwater-examples/visit-counter:1}
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "build-image.sh: $busybox is not a statically linked busybox (Debian: apt-get install busybox-static)" >&2
    exit 1
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT INT TERM
cp -R "$here/image/." "$context/"
cp "$busybox" "$context/busybox"
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "built $tag"

#!/usr/bin/env bash
# Build the offline base image for agents: Debian bookworm with python3 (full standard library),
# git and patch, from Debian's mirror with debootstrap, imported with `docker import` (no registry
# needed). A non-root user `agent` (uid 10001) is created; the Docker runtime runs agents as it.
#
#   deploy/base-image/build.sh [IMAGE]        # default flowyard/base:bookworm
#
# Users with a registry can skip this and build agent images FROM python:3.12-slim instead.
set -euo pipefail
image=${1:-flowyard/base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image is already built"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
root=$(mktemp -d /tmp/flowyard-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,git,patch,ca-certificates bookworm "$root" "$mirror" >/dev/null
chroot "$root" /usr/sbin/useradd --uid 10001 --user-group --no-create-home --home-dir /tmp agent
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'USER 10001:10001' \
  --change 'WORKDIR /tmp' \
  - "$image" >/dev/null
echo "built $image"

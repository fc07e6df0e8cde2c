#!/usr/bin/env bash
# Builds local stand-ins for the base images that Dockerfile and
# docker-compose.yml name, for a Docker Engine that can pull from no
# registry: a Debian bookworm root filesystem made by debootstrap from
# Debian's packages and imported with `docker import`, then the Go toolchain,
# Redis and Prometheus on top. Each is tagged with the official name, so
# `docker compose build` runs the real Dockerfile and `docker compose up`
# the real compose file, unchanged.
#
# Only for such machines: where a registry is reachable, pull the official
# images instead. A tag that already names an image this script did not
# build (no org.evalpool.stand-in label) is left alone.
#
# The stand-in Go image carries the module cache of this repository's
# go.mod (the module proxy's certificate is not trusted inside a build
# container) with GOPROXY=off, so the Dockerfile's `go mod download` reads
# it; it is rebuilt when go.sum changes.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
export PATH="$PATH:/usr/local/go/bin"

debian=debian:bookworm-slim
golang=golang:1.26-bookworm
redis=redis:7.2-alpine
prometheus=prom/prometheus:v2.53.0
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
label=org.evalpool.stand-in

say() { echo "compose-images: $*"; }

# present IMAGE [SUM]: the image exists and needs no build. A stand-in
# built from another go.sum (SUM) is out of date; an image that is not a
# stand-in is the real one and is kept.
present() {
  local have
  have=$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null) || return 1
  if [ -z "$have" ]; then
    say "$1 is not a stand-in: kept as it is"
    return 0
  fi
  [ -z "${2:-}" ] || [ "$have" = "$2" ]
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! present "$debian"; then
  command -v debootstrap >/dev/null || { echo "compose-images: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
  say "debootstrap bookworm into a root filesystem (about a minute)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/archives/*.deb
  tar -C "$work/rootfs" -c . | docker import \
    --change "LABEL $label=debootstrap" \
    --change 'CMD ["bash"]' \
    - "$debian" >/dev/null
  rm -rf "$work/rootfs"
  say "$debian imported"
fi

sum=$(sha256sum "$root/go.sum" | cut -c1-16)
if ! present "$golang" "$sum"; then
  say "$golang: the host's Go toolchain ($(go env GOROOT)) and the module cache of go.mod"
  mkdir -p "$work/golang"
  cp -a "$(go env GOROOT)" "$work/golang/go"
  (cd "$root" && GOMODCACHE="$work/golang/mod" GOFLAGS=-modcacherw go mod download)
  cp golang.Dockerfile "$work/golang/Dockerfile"
  docker build -q --label "$label=$sum" -t "$golang" "$work/golang" >/dev/null
  rm -rf "$work/golang"
fi

if ! present "$redis"; then
  say "$redis: Debian's redis-server"
  docker build -q --label "$label=debian" -t "$redis" -f redis.Dockerfile . >/dev/null
fi

if ! present "$prometheus"; then
  say "$prometheus: Debian's prometheus"
  docker build -q --label "$label=debian" -t "$prometheus" -f prometheus.Dockerfile . >/dev/null
fi

docker image ls --filter "label=$label" --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sed 's/^/compose-images: /'

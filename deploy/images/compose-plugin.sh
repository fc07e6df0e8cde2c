#!/usr/bin/env bash
# Installs Docker Compose v5 as the `docker compose` CLI plugin, built from
# the Go module proxy, where `docker compose` does not answer: a machine
# with only docker-compose v1 (Debian's) runs the smoke test with the
# Compose users run. Kept in ~/.docker/cli-plugins: a second run finds it
# and returns at once. A `docker compose` already there is left alone.
set -euo pipefail
version=${COMPOSE_VERSION:-v5.6.0}
plugin="$HOME/.docker/cli-plugins/docker-compose"
if docker compose version >/dev/null 2>&1; then
  exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
dir=$(go mod download -json "github.com/docker/compose/v5@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "compose-plugin: go mod download named no folder" >&2; exit 1; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cp -r "$dir"/. "$work"
chmod -R u+w "$work"
echo "compose-plugin: building Compose $version (a few minutes, once)"
(cd "$work" && CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$version" \
  -o "$work/docker-compose" ./cmd)
mkdir -p "$(dirname "$plugin")"
install -m 0755 "$work/docker-compose" "$plugin"
"$plugin" version

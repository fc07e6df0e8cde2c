#!/bin/sh
# As the official image: redis-server runs as the redis user in /data, with
# protected mode off (that image builds Redis so): with it on, a Redis with
# no password answers clients from other containers with an error, and they
# see "broken pipe". Arguments given after it still win.
set -e
if [ "$1" = "redis-server" ]; then
  shift
  chown -R redis:redis /data 2>/dev/null || true
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"

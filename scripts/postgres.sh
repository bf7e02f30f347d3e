#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for workers on several machines' worth of tests
# (and for trying multi-worker runs on one machine).
#
#   scripts/postgres.sh start DIR [PORT]   # prints the storage URL on stdout
#   scripts/postgres.sh stop DIR
#
# Installs Debian's postgresql package when no server binaries are found. initdb refuses to run
# as root, so as root the cluster belongs to the `postgres` user. Authentication is `trust` on
# 127.0.0.1 only: a test server, not a production one.
set -euo pipefail

cmd=${1:?usage: $0 start|stop DIR [PORT]}
dir=${2:?usage: $0 start|stop DIR [PORT]}
port=${3:-54329}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ]; then
  echo "installing Debian's postgresql package" >&2
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

as_owner=()
if [ "$(id -u)" = 0 ]; then as_owner=(runuser -u postgres --); fi

case $cmd in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; chmod 0755 "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U tuner -E UTF8 >"$dir/initdb.log"
    fi
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >&2
    "${as_owner[@]}" "$bindir/psql" -h 127.0.0.1 -p "$port" -U tuner -d postgres -tAq \
      -c "SELECT 1 FROM pg_database WHERE datname = 'tuner'" | grep -q 1 ||
      "${as_owner[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U tuner tuner
    echo "postgresql+psycopg://tuner@127.0.0.1:$port/tuner"
    ;;
  stop)
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    ;;
  *)
    echo "usage: $0 start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac

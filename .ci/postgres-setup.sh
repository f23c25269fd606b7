#!/usr/bin/env bash
# Installs PostgreSQL from Debian packages if missing, initialises a throwaway cluster in a
# temp dir (in memory if /dev/shm is there), starts it on 127.0.0.1 and prints the URL the
# tests use (KEYCUSTODY_PG_URL).
# Usage: eval "$(bash .ci/postgres-setup.sh start)"   ...   bash .ci/postgres-setup.sh stop DIR
set -euo pipefail

# A free port unless one is given (another cluster may already listen on this machine).
PORT="${KEYCUSTODY_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

case "${1:-start}" in
start)
    if ! BIN=$(pg_bin); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        BIN=$(pg_bin)
    fi
    # In memory where there is a tmpfs: each test creates and drops a database (about 300
    # files each), which took 0.1-0.4 s on this kind of machine's disk and 16 ms in tmpfs.
    BASE=/tmp
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then BASE=/dev/shm; fi
    DATA=$(mktemp -d "$BASE/keycustody-pg.XXXXXX")
    chown postgres:postgres "$DATA"
    # Trust auth on loopback only; fsync off: a CI cluster that is thrown away after the run.
    runuser -u postgres -- "$BIN/initdb" -D "$DATA/data" -U postgres --auth=trust \
        --encoding=UTF8 --no-instructions >&2
    runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA/data" -l "$DATA/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DATA \
            -c fsync=off -c full_page_writes=off -c max_connections=300" start >&2
    echo "export KEYCUSTODY_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
    echo "export KEYCUSTODY_PG_DIR=$DATA"
    ;;
stop)
    BIN=$(pg_bin)
    runuser -u postgres -- "$BIN/pg_ctl" -D "$2/data" -m fast -w stop >&2 || true
    rm -rf "$2"
    ;;
*)
    echo "usage: $0 start | stop DIR" >&2
    exit 2
    ;;
esac

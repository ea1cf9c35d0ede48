#!/bin/sh
# Makes the cluster on first start (an empty $PGDATA): superuser $POSTGRES_USER with the
# password in $POSTGRES_PASSWORD_FILE (scram-sha-256; the password is never in an argument or
# the environment), and the database $POSTGRES_DB. Then runs PostgreSQL in the foreground,
# listening on the container's network; every connection over it needs the password.
set -eu
user=${POSTGRES_USER:-berth}
db=${POSTGRES_DB:-berth}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ ! -r "${POSTGRES_PASSWORD_FILE:-}" ]; then
    echo "berth-postgres: POSTGRES_PASSWORD_FILE must name a readable file holding the password" >&2
    exit 1
  fi
  # initdb takes the first line of --pwfile as the password.
  initdb --username="$user" --pwfile="$POSTGRES_PASSWORD_FILE" --auth=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # Single-user mode: no server listens while the database is made.
  echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | postgres --single -D "$PGDATA" postgres >/dev/null
  echo "berth-postgres: made the cluster with user $user and database $db"
fi
# No unix socket: nothing in the container connects locally (the health check uses TCP).
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=''

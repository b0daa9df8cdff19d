#!/usr/bin/env bash
# Restore a dump from backup-db.sh into an EMPTY database, then bring its schema to this
# release's head. Stop the replicas first (or point them at the restored database after).
#
#   createdb -O kswifi kswifi_restored
#   deploy/scripts/restore-db.sh postgresql://kswifi@db1/kswifi_restored /var/backups/kswifi/kswifi-….dump
#
# KSWIFI_SECRET_KEY must be the one the dump was made under, or stored keys will not decrypt.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 DSN DUMP" >&2
  exit 2
fi
dsn=$1
dump=$2
[[ -r $dump ]] || { echo "cannot read $dump" >&2; exit 2; }

tables=$(psql --dbname="$dsn" --tuples-only --no-align \
  --command="SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
if [[ $tables -ne 0 ]]; then
  echo "refusing to restore into a database that already has $tables tables" >&2
  exit 1
fi

pg_restore --no-owner --no-privileges --exit-on-error --single-transaction \
  --dbname="$dsn" "$dump"

# Migrations are additive and idempotent: a dump from an older release is brought forward.
kswifi=${KSWIFI_BIN:-kswifi}
url=${dsn/postgresql:\/\//postgresql+asyncpg:\/\/}
KSWIFI_DATABASE_URL=$url "$kswifi" db upgrade
echo "restored $dump"

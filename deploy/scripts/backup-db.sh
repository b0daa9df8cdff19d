#!/usr/bin/env bash
# Back up the control plane's PostgreSQL database: one custom-format dump per run, checked
# readable before it replaces nothing, the newest KEEP kept.
#
#   deploy/scripts/backup-db.sh DSN DIR [KEEP]
#   e.g. from a systemd timer or cron, as a user that may read the database:
#   deploy/scripts/backup-db.sh postgresql://kswifi@db1/kswifi /var/backups/kswifi 14
#
# The dump holds gateway and preshared keys encrypted with a key derived from KSWIFI_SECRET_KEY:
# keep a copy of that secret apart from the dumps (a dump without it cannot decrypt them, and
# the secret without a dump is useless to a thief).
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 DSN DIR [KEEP]" >&2
  exit 2
fi
dsn=$1
dir=$2
keep=${3:-14}
[[ $keep =~ ^[1-9][0-9]*$ ]] || { echo "KEEP must be a positive number" >&2; exit 2; }

mkdir -p "$dir"
chmod 0700 "$dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
partial="$dir/.kswifi-$stamp.dump.partial"
final="$dir/kswifi-$stamp.dump"
trap 'rm -f "$partial"' EXIT

pg_dump --format=custom --compress=6 --no-owner --no-privileges --dbname="$dsn" --file="$partial"
pg_restore --list "$partial" >/dev/null  # a dump we cannot read is no backup
mv "$partial" "$final"
trap - EXIT

# Keep the newest $keep dumps.
mapfile -t old < <(ls -1t "$dir"/kswifi-*.dump | tail -n +"$((keep + 1))")
if [[ ${#old[@]} -gt 0 ]]; then
  rm -f -- "${old[@]}"
fi
echo "$final"

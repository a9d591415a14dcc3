#!/usr/bin/env bash
# A real PostgreSQL server for the shared-study test of `grace tune`, from Debian's packages,
# started as a user scaling a study out to several machines would run it. Prints the URL.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql | sort -n | tail -1)
if [ -z "$(pg_lsclusters -h | awk -v v="$version" '$1 == v')" ]; then
    pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 30); do
    su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname = 'grace'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"create role grace login password 'grace'\"" >/dev/null
su postgres -c "PGOPTIONS='-c client_min_messages=warning' psql -qc 'drop database if exists grace_tune'" >/dev/null
su postgres -c "psql -qc 'create database grace_tune owner grace'" >/dev/null
echo "postgresql://grace:grace@127.0.0.1:5432/grace_tune"

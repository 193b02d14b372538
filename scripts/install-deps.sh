#!/bin/sh
# Installs the server binaries Mailferry's tests and `make run` need, when
# missing: redis-server and the PostgreSQL server. Debian/Ubuntu only.
set -eu
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
if ! command -v pg_config >/dev/null 2>&1 || [ ! -x "$(pg_config --bindir 2>/dev/null)/initdb" ]; then
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
fi
[ -z "$need" ] && exit 0
echo "installing:$need"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The postgresql package would start a system cluster on 5432; tests run
# their own, so only the server binaries matter.
$SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null

#!/bin/sh
# Run by `make run` inside devstack, which exports MAILFERRY_REDIS_URL and
# MAILFERRY_DATABASE_URL. Migrates, makes a development key once, and runs
# mailferry in the foreground; Ctrl-C stops it and devstack stops the rest.
set -eu
bin="$1"
dir="$2"
: "${MAILFERRY_HOSTNAME:=localhost.localdomain}"
: "${MAILFERRY_LOG_FORMAT:=text}"
: "${MAILFERRY_HTTP_ADDR:=127.0.0.1:8080}"
export MAILFERRY_HOSTNAME MAILFERRY_LOG_FORMAT MAILFERRY_HTTP_ADDR
"$bin" migrate
keyfile="$dir/dev-api-key"
if [ ! -s "$keyfile" ]; then
	"$bin" keys create --tenant dev --domain example.com > "$keyfile"
fi
key="$(cat "$keyfile")"
port="${MAILFERRY_HTTP_ADDR##*:}"
cat <<MSG

Mailferry is starting on http://127.0.0.1:$port (Ctrl-C stops it and its servers).
Development API key (tenant "dev", sender domain example.com) is in $keyfile.

Send a message:

  curl -s http://127.0.0.1:$port/v1/messages \\
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \\
    -d '{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello Bob"}'

Then read its status with the "id" from the answer:

  curl -s http://127.0.0.1:$port/v1/messages/ID -H "Authorization: Bearer $key"

MSG
exec "$bin" serve

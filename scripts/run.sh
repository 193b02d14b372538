#!/bin/sh
# Run by `make run` inside devstack, which exports MAILFERRY_REDIS_URL and
# MAILFERRY_DATABASE_URL:
#
#   run.sh BIN RUN_DIR
#
# Starts MailDev (installed in RUN_DIR/maildev) as the smarthost, migrates,
# creates once a secret key, a development API key and a DKIM key for
# example.com, prints how to send a mail, and runs `mailferry serve` in the
# foreground. Ctrl-C (SIGINT) or SIGTERM stops mailferry, then MailDev;
# devstack then stops Redis and PostgreSQL.
#
# It also starts devdns ($DEVDNS, else next to BIN) on a free loopback port as
# MAILFERRY_DNS_SERVER, unless that is set: it answers from
# RUN_DIR/dns-records.txt (README.md, Onboarding a sending domain) and
# passes other questions to the system's resolver.
#
# Environment: MAILFERRY_HTTP_ADDR (127.0.0.1:8080), MAILDEV_SMTP_PORT
# (1025), MAILDEV_WEB_PORT (1080); other MAILFERRY_ variables pass through.
set -eu
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
# Absolute: `make stop` finds what is left behind by this folder's name.
dir="$(cd "$2" && pwd)"

: "${MAILDEV_SMTP_PORT:=1025}"
: "${MAILDEV_WEB_PORT:=1080}"
: "${MAILFERRY_HTTP_ADDR:=127.0.0.1:8080}"
: "${MAILFERRY_HOSTNAME:=localhost.localdomain}"
: "${MAILFERRY_SMARTHOST:=smtp://127.0.0.1:$MAILDEV_SMTP_PORT}"
# SMTP submission needs a certificate; off unless asked for.
: "${MAILFERRY_SUBMISSION_ADDR=}"
: "${MAILFERRY_SUBMISSIONS_ADDR=}"
if [ -z "${MAILFERRY_LOG_FORMAT:-}" ]; then
	MAILFERRY_LOG_FORMAT=json
	[ -t 2 ] && MAILFERRY_LOG_FORMAT=text
fi
export MAILFERRY_HTTP_ADDR MAILFERRY_HOSTNAME MAILFERRY_SMARTHOST \
	MAILFERRY_SUBMISSION_ADDR MAILFERRY_SUBMISSIONS_ADDR MAILFERRY_LOG_FORMAT

# once creates file by running the rest of the arguments, unless it exists;
# the output lands in a temporary file first so a failure leaves no stub.
once() {
	file="$1"
	shift
	[ -s "$file" ] && return 0
	(umask 077 && "$@" >"$file.tmp")
	mv "$file.tmp" "$file"
}

# The key that seals DKIM private keys at rest.
once "$dir/secret-key" sh -c 'head -c 32 /dev/urandom | base64'
MAILFERRY_SECRET_KEY="$(cat "$dir/secret-key")"
export MAILFERRY_SECRET_KEY

# listening tells whether something accepts TCP connections on 127.0.0.1:$1.
listening() {
	node -e 'require("net").connect(+process.argv[1], "127.0.0.1")
		.on("connect", () => process.exit(0)).on("error", () => process.exit(1))' "$1"
}

for port in "$MAILDEV_SMTP_PORT" "$MAILDEV_WEB_PORT"; do
	if listening "$port"; then
		echo "run.sh: port $port is taken; \`make stop\` ends a make run left behind," >&2
		echo "or set MAILDEV_SMTP_PORT and MAILDEV_WEB_PORT to free ports." >&2
		exit 1
	fi
done

# MailDev runs in a process group of its own, so that Ctrl-C reaches only
# mailferry: MailDev keeps accepting mail until mailferry has stopped.
maildev_log="$dir/maildev/maildev.log"
mkdir -p "$dir/maildev/mail"
setsid "$dir/maildev/node_modules/.bin/maildev" \
	--ip 127.0.0.1 --smtp "$MAILDEV_SMTP_PORT" \
	--web-ip 127.0.0.1 --web "$MAILDEV_WEB_PORT" \
	--mail-directory "$dir/maildev/mail" --max-emails 1000 \
	</dev/null >"$maildev_log" 2>&1 &
maildev=$!

devdns=""
if [ -z "${MAILFERRY_DNS_SERVER:-}" ]; then
	rm -f "$dir/dns.addr"
	setsid "${DEVDNS:-$(dirname "$bin")/devdns}" -records "$dir/dns-records.txt" -addr-file "$dir/dns.addr" \
		</dev/null >"$dir/devdns.log" 2>&1 &
	devdns=$!
fi

# shellcheck disable=SC2317 # called by the EXIT trap
stop_maildev() {
	kill -TERM "$maildev" 2>/dev/null || true
	# Wait, so that its ports are free when make run returns.
	wait "$maildev" 2>/dev/null || true
	if [ -n "$devdns" ]; then
		kill -TERM "$devdns" 2>/dev/null || true
		wait "$devdns" 2>/dev/null || true
	fi
}
trap stop_maildev EXIT
# Until mailferry serves, a signal ends the set-up (and MailDev, on EXIT).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

tries=0
until listening "$MAILDEV_SMTP_PORT" && listening "$MAILDEV_WEB_PORT"; do
	tries=$((tries + 1))
	if ! kill -0 "$maildev" 2>/dev/null || [ "$tries" -gt 300 ]; then
		echo "run.sh: MailDev did not start; its log ($maildev_log):" >&2
		tail -n 20 "$maildev_log" >&2
		exit 1
	fi
	sleep 0.1
done

if [ -n "$devdns" ]; then
	tries=0
	until [ -s "$dir/dns.addr" ]; do
		tries=$((tries + 1))
		if ! kill -0 "$devdns" 2>/dev/null || [ "$tries" -gt 100 ]; then
			echo "run.sh: devdns did not start; its log ($dir/devdns.log):" >&2
			tail -n 20 "$dir/devdns.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	MAILFERRY_DNS_SERVER="$(cat "$dir/dns.addr")"
	export MAILFERRY_DNS_SERVER
fi

"$bin" migrate
once "$dir/dev-api-key" "$bin" keys create --tenant dev --domain example.com
once "$dir/dkim-example.com.txt" "$bin" dkim keygen --domain example.com --algorithm ed25519
key="$(cat "$dir/dev-api-key")"
port="${MAILFERRY_HTTP_ADDR##*:}"
cat <<MSG

Mailferry is starting on http://127.0.0.1:$port; it relays all mail to MailDev.
  MailDev (the mail catcher, web UI):  http://127.0.0.1:$MAILDEV_WEB_PORT
  Development API key (tenant "dev", sender domain example.com):  $dir/dev-api-key
  DKIM key for example.com (ed25519); its DNS record:  $dir/dkim-example.com.txt
  DNS records Mailferry's domain checks see (devdns):  $dir/dns-records.txt
Ctrl-C stops Mailferry, MailDev, Redis and PostgreSQL; their data stay in $dir.

Send a message:

  curl -s http://127.0.0.1:$port/v1/messages \\
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \\
    -d '{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello Bob"}'

Then read its status with the "id" from the answer:

  curl -s http://127.0.0.1:$port/v1/messages/ID -H "Authorization: Bearer $key"

MSG

"$bin" serve &
serve=$!
echo "$serve" >"$dir/mailferry.pid"
# Ctrl-C reaches mailferry through the terminal's process group; SIGTERM
# (from devstack) and SIGHUP (a closed terminal) are passed on as SIGTERM,
# which mailferry drains on. Either way, MailDev stops after mailferry.
trap 'kill -INT "$serve" 2>/dev/null || true' INT
trap 'kill -TERM "$serve" 2>/dev/null || true' TERM HUP
status=0
wait "$serve" || status=$?
while kill -0 "$serve" 2>/dev/null; do
	status=0
	wait "$serve" || status=$?
done
rm -f "$dir/mailferry.pid"
exit "$status"

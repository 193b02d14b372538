#!/bin/sh
# Installs what Mailferry's tests and `make run` need, when missing. Always
# redis-server and redis-cli (a Redis Cluster for the tests), the PostgreSQL server, swaks (an outside SMTP client the
# submission tests use) and Postfix (the bounce test runs its own instance
# as a real MTA that bounces after queueing), unbound (a validating resolver
# for the DANE tests), pgbouncer (transaction pooling tests), python3-dkim
# (an independent DKIM verifier); with arguments also:
#
#   node      Node.js 20 or later and npm, for MailDev (`make run`)
#   chromium  headless Chromium (`make demo-test`)
#   curl      curl (`make demo-test` runs the curl command `make run` prints)
#
# Debian/Ubuntu only.
set -eu
need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
# redis-cli --cluster create joins the test Redis Cluster (internal/devstack).
command -v redis-cli >/dev/null 2>&1 || need="$need redis-tools"
command -v swaks >/dev/null 2>&1 || need="$need swaks"
# swaks speaks TLS only through Net::SSLeay and IO::Socket::SSL, which it
# merely recommends: --no-install-recommends leaves them out.
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need="$need libnet-ssleay-perl libio-socket-ssl-perl"
[ -x /usr/sbin/postfix ] || need="$need postfix"
# unbound: the validating resolver the DANE tests put in front of a
# DNSSEC-signed test zone (internal/testmx/unbound.go).
[ -x /usr/sbin/unbound ] || need="$need unbound"
# python3-dkim (dkimpy, with dnspython): the independent DKIM verifier of
# the rotation test (cmd/mailferry/rotation_test.go). Debian's own python,
# which is what the test runs.
/usr/bin/python3 -c 'import dkim, dns.resolver' >/dev/null 2>&1 || need="$need python3-dkim python3-dnspython"
# pgbouncer: the tests run Mailferry behind PgBouncer in transaction pooling
# mode (internal/devstack/pgbouncer.go); the package's system service is
# never started by the tests.
[ -x /usr/sbin/pgbouncer ] || need="$need pgbouncer"
if ! command -v pg_config >/dev/null 2>&1 || [ ! -x "$(pg_config --bindir 2>/dev/null)/initdb" ]; then
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
fi
for what in "$@"; do
	case "$what" in
	node)
		# A Node.js from elsewhere (NodeSource) brings its own npm, and
		# Debian's npm package conflicts with it: install only what is absent.
		command -v node >/dev/null 2>&1 || need="$need nodejs"
		command -v npm >/dev/null 2>&1 || need="$need npm"
		# jq: README's onboarding walk-through turns the API's records into
		# lines for make run's DNS server.
		command -v jq >/dev/null 2>&1 || need="$need jq"
		;;
	chromium) command -v chromium >/dev/null 2>&1 || need="$need chromium" ;;
	curl) command -v curl >/dev/null 2>&1 || need="$need curl" ;;
	*)
		echo "install-deps.sh: unknown argument $what (want node, chromium or curl)" >&2
		exit 2
		;;
	esac
done
if [ -n "$need" ]; then
	echo "installing:$need"
	SUDO=""
	[ "$(id -u)" -ne 0 ] && SUDO="sudo"
	export DEBIAN_FRONTEND=noninteractive
	# Postfix unconfigured: no system instance set up or started; the test
	# runs its own, with its own configuration and queue.
	case "$need" in *postfix*)
		echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
		;;
	esac
	$SUDO apt-get update -qq
	# The postgresql package would start a system cluster on 5432; tests run
	# their own, so only the server binaries matter.
	# shellcheck disable=SC2086 # $need is a list of package names
	$SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
for what in "$@"; do
	[ "$what" = node ] || continue
	major="$(node -p 'process.versions.node.split(".")[0]')"
	if [ "$major" -lt 20 ]; then
		echo "install-deps.sh: MailDev needs Node.js 20 or later; this machine has $(node --version)." >&2
		echo "Install a newer Node.js (Debian 13, or NodeSource's packages on Debian 12) and run make again." >&2
		exit 1
	fi
done

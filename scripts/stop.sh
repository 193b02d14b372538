#!/bin/sh
# Ends what a `make run` on RUN_DIR left running after it was killed without
# Ctrl-C (kill -9 of make run, a closed terminal): mailferry, MailDev, Redis
# and PostgreSQL, and devdns.
#
#   stop.sh RUN_DIR
set -eu
[ -d "$1" ] || exit 0
dir="$(cd "$1" && pwd)"

# cmdline prints the command line of process $1, or nothing once it is gone.
cmdline() {
	tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true
}

# left lists the processes still running for RUN_DIR: mailferry by its pid
# file, and every Redis, PostgreSQL and MailDev (node) process whose working
# directory or command line is in RUN_DIR. (Redis rewrites its command line
# and PostgreSQL's children have their own; both work in their data folder.)
left() {
	pid="$(cat "$dir/mailferry.pid" 2>/dev/null || true)"
	case "$(cmdline "${pid:-0}")" in
	*mailferry*serve*) echo "$pid" ;;
	esac
	for p in /proc/[0-9]*; do
		case "$(cat "$p/comm" 2>/dev/null || true)" in
		redis-server | postgres | node | devdns) ;;
		*) continue ;;
		esac
		pid="${p#/proc/}"
		case "$(readlink "$p/cwd" 2>/dev/null || true)/" in
		"$dir"/*)
			echo "$pid"
			continue
			;;
		esac
		case "$(cmdline "$pid")" in
		*"$dir"/*) echo "$pid" ;;
		esac
	done
}

# wait_gone waits up to five seconds for the processes in $@ to end.
wait_gone() {
	i=0
	while [ "$i" -lt 50 ]; do
		alive=""
		for pid in "$@"; do
			[ -n "$(cmdline "$pid")" ] && alive=1
		done
		[ -z "$alive" ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
}

# Mailferry first, so that PostgreSQL's shutdown need not wait for its
# connections; then SIGINT, PostgreSQL's fast shutdown, ends the others.
# shellcheck disable=SC2086 # $pids is a list of pids
for sig in TERM INT INT KILL; do
	pids="$(left | sort -u)"
	[ -n "$pids" ] || break
	if [ "$sig" = TERM ]; then
		mf="$(cat "$dir/mailferry.pid" 2>/dev/null || true)"
		echo "$pids" | grep -qx "${mf:-none}" || continue
		pids="$mf"
	fi
	echo "stopping what make run left on $dir (SIG$sig):" $pids
	kill -s "$sig" $pids 2>/dev/null || true
	wait_gone $pids
done
rm -f "$dir/mailferry.pid"

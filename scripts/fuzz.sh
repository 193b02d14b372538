#!/bin/sh
# Runs every fuzz target of the module for a bounded time each:
#
#   FUZZTIME=10s scripts/fuzz.sh            # all packages with Fuzz* tests
#   FUZZTIME=1m  scripts/fuzz.sh ./mail     # only these packages
#
# `go test -fuzz` takes one target of one package per run, so this asks each
# package for its targets (`go test -list`) and runs them one after the
# other. Packages whose tests need Redis and PostgreSQL start their own
# unless MAILFERRY_TEST_REDIS_URL and MAILFERRY_TEST_DATABASE_URL are set
# (`make fuzz` runs this under devstack, which sets them).
#
# FUZZTIME is a duration (10s) or a count of executions (20000x). `make
# test` gives a count: a duration is a wall-clock deadline, and on a busy
# machine Go's fuzz coordinator can report that deadline itself as a
# failure ("context deadline exceeded") with no input found. A count has
# no deadline; a run that still ends that way, having written no failing
# input, is reported as such and not counted as a finding.
#
# A failing input is written to <package>/testdata/fuzz/<target>/: fix the
# bug and commit the file, so the plain test run keeps checking it. All
# targets run even after a failure; the exit status is 1 if any failed.
set -eu
FUZZTIME="${FUZZTIME:-10s}"
GO="${GO:-go}"
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
	pkgs="$*"
else
	pkgs=$(find . -name '*_test.go' -not -path './.git/*' -not -path './.run/*' -not -path './bin/*' \
		-exec grep -l '^func Fuzz' {} + | sed 's|/[^/]*$||' | sort -u)
fi

failed=""
count=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for pkg in $pkgs; do
	targets=$($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	if [ -z "$targets" ]; then
		echo "fuzz: $pkg has no fuzz targets" >&2
		continue
	fi
	for target in $targets; do
		count=$((count + 1))
		echo "=== fuzz $pkg $target for $FUZZTIME"
		if $GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >"$out" 2>&1; then
			cat "$out"
			continue
		fi
		cat "$out"
		if ! grep -q 'Failing input written' "$out" &&
			[ "$(grep -c '^    ' "$out")" -eq 1 ] &&
			grep -q '^    context deadline exceeded$' "$out"; then
			echo "fuzz: $pkg $target: the fuzz coordinator's own deadline, no failing input: not a finding" >&2
			continue
		fi
		failed="$failed $pkg:$target"
	done
done

if [ "$count" -eq 0 ]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi
if [ -n "$failed" ]; then
	echo "fuzz: FAILED:$failed" >&2
	exit 1
fi
echo "fuzz: $count targets passed, $FUZZTIME each"

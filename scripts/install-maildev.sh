#!/bin/sh
# Installs MailDev, the mail catcher `make run` relays to, into DIR (for
# make run: .run/maildev). scripts/maildev/package-lock.json pins MailDev and
# every package under it; the install is redone only when that file changes.
#
#   install-maildev.sh DIR
set -eu
dir="$1"
src="$(cd "$(dirname "$0")/maildev" && pwd)"
stamp="$dir/installed-package-lock.json"
if [ -x "$dir/node_modules/.bin/maildev" ] && cmp -s "$src/package-lock.json" "$stamp"; then
	exit 0
fi
echo "installing MailDev into $dir"
mkdir -p "$dir"
rm -f "$stamp"
cp "$src/package.json" "$src/package-lock.json" "$dir/"
# Some of MailDev's packages declare Node.js 22 while MailDev itself needs
# 20; they run on 20, so npm's engine warnings are noise here.
npm ci --prefix "$dir" --prefer-offline --omit=dev --no-audit --no-fund --loglevel=error
cp "$src/package-lock.json" "$stamp"

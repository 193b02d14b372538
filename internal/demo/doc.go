// Package demo has no code of its own, only the end-to-end test of
// `make run` (build tag demo; `make demo-test` installs what it needs and
// runs it): the curl command make run prints sends a mail through Mailferry
// to MailDev, whose web UI, driven in headless Chromium over the DevTools
// protocol, shows it with its DKIM signature; Ctrl-C then leaves nothing
// running, a second make run reuses the first one's data, and `make stop`
// ends what a killed make run left behind.
//
// It talks only to 127.0.0.1. Screenshots, the page's DOM, the delivered
// message and the logs are saved as test artifacts (go test -artifacts).
package demo

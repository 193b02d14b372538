# Mailferry — `make run` starts it, `make test` tests it. Both install what
# a fresh Debian machine lacks (redis-server, PostgreSQL) and start
# throwaway servers on free loopback ports.
GO          ?= go
BIN         ?= bin/mailferry
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOBIN       := $(shell $(GO) env GOPATH)/bin
RUN_DIR     ?= .run

.PHONY: all build deps test vet fmt-check lint run stop clean demo-test vuln fuzz reliability bench

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mailferry

# deps installs the server binaries the tests and `make run` start.
deps:
	@./scripts/install-deps.sh

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint: fmt-check vet
	@test -x $(GOBIN)/staticcheck || $(GO) install $(STATICCHECK)
	$(GOBIN)/staticcheck ./...

# test runs everything CI runs: formatting, vet, staticcheck, and the race-
# enabled test suite against real Redis and PostgreSQL.
test: deps lint
	$(GO) run ./internal/cmd/devstack -cluster -- $(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz FUZZTIME=20000x

# reliability runs the fault tests (kill -9, SIGTERM, Redis data loss, a
# PostgreSQL restart) at full size: thousands of messages and a 60-second
# outage, about five minutes. `make test` runs them small.
reliability: deps
	MAILFERRY_RELIABILITY=1 $(GO) test -race -count=1 -v -timeout 40m ./reliability

# fuzz runs every fuzz target (scripts/fuzz.sh) for FUZZTIME each against
# throwaway Redis and PostgreSQL; a failing input lands in
# <package>/testdata/fuzz/<target>/ to be fixed and committed.
FUZZTIME ?= 10s
fuzz: deps
	$(GO) run ./internal/cmd/devstack -- env GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# run starts Redis and PostgreSQL under $(RUN_DIR) (kept between runs) and
# MailDev as the smarthost, creates a development API key and a DKIM key,
# and runs mailferry in the foreground until Ctrl-C. Ports:
# MAILFERRY_HTTP_ADDR (127.0.0.1:8080), MAILDEV_SMTP_PORT (1025) and
# MAILDEV_WEB_PORT (1080) in the environment move them. devstack is built,
# not `go run`: go run exits 1 after a Ctrl-C even when its program exits 0.
run: build
	@./scripts/install-deps.sh node
	@./scripts/install-maildev.sh $(RUN_DIR)/maildev
	@$(GO) build -o bin/devstack ./internal/cmd/devstack
	@$(GO) build -o bin/devdns ./internal/cmd/devdns
	DEVDNS=$(abspath bin/devdns) bin/devstack -dir $(RUN_DIR) -persist -prefix MAILFERRY_ -- ./scripts/run.sh $(BIN) $(RUN_DIR)

# stop ends what a `make run` left behind when it was killed without Ctrl-C.
stop:
	@./scripts/stop.sh $(RUN_DIR)

clean: stop
	rm -rf $(RUN_DIR) bin

# demo-test proves `make run` end to end: the curl command it prints sends a
# mail that MailDev's web UI shows in headless Chromium, DKIM-signed, and
# Ctrl-C leaves nothing running. Screenshot, DOM and logs land in
# $(DEMO_ARTIFACTS).
DEMO_ARTIFACTS ?= bin/demo-test
demo-test: build
	@./scripts/install-deps.sh node chromium curl
	$(GO) vet -tags demo ./internal/demo
	@mkdir -p $(DEMO_ARTIFACTS)
	$(GO) test -tags demo -count=1 -timeout 15m -v -artifacts -outputdir $(abspath $(DEMO_ARTIFACTS)) ./internal/demo

# bench starts the whole stack on loopback, drives it with its own load
# generator and writes a report to bench/results/ (bench/README.md; add
# BENCHFLAGS=-quick for a short run).
bench: deps
	$(GO) run ./bench/cmd/mfbench $(BENCHFLAGS)

# vuln checks dependencies against the Go vulnerability database (needs
# network access to it).
vuln:
	$(GO) run golang.org/x/vuln/cmd/govulncheck@v1.1.4 ./...

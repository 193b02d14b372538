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

.PHONY: all build deps test vet fmt-check lint run stop clean vuln

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
	$(GO) run ./internal/cmd/devstack -- $(GO) test -race -count=1 -timeout 20m ./...

# run starts Redis and PostgreSQL under $(RUN_DIR) (kept between runs),
# creates a development API key and runs mailferry in the foreground.
run: deps build
	$(GO) run ./internal/cmd/devstack -dir $(RUN_DIR) -persist -prefix MAILFERRY_ -- ./scripts/run.sh $(BIN) $(RUN_DIR)

# stop is for a `make run` killed without Ctrl-C: it ends servers left behind.
stop:
	-@pkill -f "$(abspath $(RUN_DIR))" 2>/dev/null; true

clean: stop
	rm -rf $(RUN_DIR) bin

# vuln checks dependencies against the Go vulnerability database (needs
# network access to it).
vuln:
	$(GO) run golang.org/x/vuln/cmd/govulncheck@v1.1.4 ./...

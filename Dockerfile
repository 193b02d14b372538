# Mailferry container image: a static binary on a distroless base.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t mailferry .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# The build flags match `make build`; internal/deploycheck builds with the
# flags it reads from this file and checks the result is statically linked.

# Builder: the Go release named by go.mod's go directive (or newer).
FROM golang:1.26.8 AS build
WORKDIR /src
# Modules first, so a code change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mailferry ./cmd/mailferry

# Runtime: no shell, no package manager; CA certificates, tzdata and a
# nonroot user (65532) come with the image. The tag follows Debian 13
# security updates; pin a digest for reproducible releases:
#   crane digest gcr.io/distroless/static-debian13:nonroot
FROM gcr.io/distroless/static-debian13:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="mailferry" \
      org.opencontainers.image.description="Outbound mail relay for applications" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/mailferry /mailferry
# Numeric, so Kubernetes can verify runAsNonRoot without /etc/passwd.
USER 65532:65532
# 8080: HTTP API, /metrics, /healthz, /readyz. 587: submission (STARTTLS).
# 465: submission with implicit TLS. Docker lets unprivileged processes bind
# ports below 1024 inside a container; the Kubernetes base moves them up.
EXPOSE 8080 587 465
ENTRYPOINT ["/mailferry"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# The replicator sidecar as a container image: a static binary on a
# distroless base, running as a non-root user, its data on the /data
# volume. Build it from the repository's root:
#
#   docker build -t replicator:dev .
#   docker run --rm replicator:dev version
#
# packaging/compose/docker-compose.yaml runs three DCs on one NATS server
# with it; packaging/k8s/ shows it as a sidecar in Kubernetes.

# Build: the Go version go.mod names (go 1.26.8).
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO off: one static binary, no libc needed at run time. -trimpath and no
# VCS stamp keep the build reproducible (the image has no .git);
# `replicator version` then says "revision unknown".
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/replicator ./cmd/replicator \
 && mkdir -p /out/data

# Run: no shell, no package manager; user nonroot (uid 65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/replicator /usr/local/bin/replicator
# The data volume, owned by the non-root user (a named volume takes the
# ownership of this directory when it is first mounted).
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME ["/data"]
# 7070: the HTTP API, /healthz, /readyz, /metrics, /ui. 4222: the embedded
# NATS server, when a config runs one (nats.embedded) and others reach it.
EXPOSE 7070 4222
# The sidecar's own probe: the image has no curl. It dials http.listen's
# port on loopback; /healthz needs no token.
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/replicator", "probe", "--addr", "http://127.0.0.1:7070"]
ENTRYPOINT ["/usr/local/bin/replicator"]
# Mount a config at /etc/replicator/replicator.yaml (data_dir: /data,
# http.listen: 0.0.0.0:7070 with an http.token).
CMD ["run", "--config", "/etc/replicator/replicator.yaml"]

# syntax=docker/dockerfile:1
# The Rucat image: one binary, /usr/local/bin/rucat, run as the unprivileged user 65532.
#
#   docker build -t ghcr.io/rucat/rucat:0.1.0 .
#
# The image runs any role: the Helm chart (deploy/helm/rucat) starts `rucat server` and
# `rucat monitor`; `docker run IMAGE engine list` is the client. With no arguments it prints
# the usage: the embedded `rucat serve` needs a local Spark, which this image does not ship.

FROM rust:1-bookworm AS build
# protoc: `rucat engine sql` queries engines with spark-connect-rs (the `spark` feature, on by
# default), which compiles Spark Connect's protobufs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to load it (.dockerignore keeps
# target/ and .git/ out). Only the rucat binary is built; it links nothing but glibc.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rucat --bin rucat \
    && install -m 0755 target/release/rucat /usr/local/bin/rucat

FROM debian:bookworm-slim
# ca-certificates: TLS to the Kubernetes API server (outside a cluster) and to other HTTPS
# services.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/rucat
COPY --from=build /usr/local/bin/rucat /usr/local/bin/rucat
# The data directory (the chart mounts an emptyDir there; the root filesystem can be read-only).
ENV RUCAT_DATA_DIR=/var/lib/rucat
USER 65532:65532
EXPOSE 3000
ENTRYPOINT ["rucat"]
CMD ["--help"]

# syntax=docker/dockerfile:1
#
# auditwatch container image. Build: docker build -t auditwatch .
# Layout (docs/deploy.md): binary /usr/local/bin/auditwatch, config /etc/auditwatch/config.yaml,
# bundled rule packs /etc/auditwatch/rules/, opt-in peer packs /usr/share/auditwatch/peers/,
# state volume /var/lib/auditwatch, TLS material
# expected at /etc/auditwatch/tls/ (mount a Secret). Runs as uid 65532 on a read-only root.
# tests/container.rs lints this file (hadolint), checks these promises and runs the same
# release binary with the same entrypoint, arguments and file layout.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/throughput.rs \
    && echo 'fn main() {}' > benches/webhook_latency.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY rules ./rules
# touch: the copied sources can be older than the placeholder build above.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p /out/var/lib/auditwatch

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="auditwatch" \
      org.opencontainers.image.description="Real-time alerting rules engine for Kubernetes audit logs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot" \
      org.opencontainers.image.documentation="docs/deploy.md in the source tree"
COPY --from=build /src/target/release/auditwatch /usr/local/bin/auditwatch
COPY rules/*.yaml /etc/auditwatch/rules/
# Ported peer rule sets (Falco, Panther): opt-in, so outside the rules directory the config loads.
COPY peers/ /usr/share/auditwatch/peers/
COPY deploy/container/config.yaml /etc/auditwatch/config.yaml
# The state dir exists in the image, owned by the runtime user, so that a fresh (anonymous or
# named) volume mounted there is writable by it.
COPY --from=build --chown=65532:65532 /out/var/lib/auditwatch /var/lib/auditwatch
USER 65532:65532
VOLUME ["/var/lib/auditwatch"]
# 8443: the audit webhook (TLS). 9095: /metrics, /healthz, /readyz (plain HTTP).
EXPOSE 8443 9095
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/auditwatch", "probe", "http://127.0.0.1:9095/healthz"]
ENTRYPOINT ["/usr/local/bin/auditwatch"]
CMD ["run", "--config", "/etc/auditwatch/config.yaml"]

# syntax=docker/dockerfile:1
#
# pigeond in a container: a Rust build stage, then a small Debian runtime
# that runs as an unprivileged user. See docs/operations.md ("Docker").
#
#   docker build -t pigeond .
#   docker run -d --name pigeond -p 7443:7443 -v pigeon-data:/var/lib/pigeon \
#     -v /etc/pigeon:/etc/pigeon:ro pigeond \
#     serve --config /etc/pigeon/pigeond.toml --log-json

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches make rebuilds incremental; the binaries
# are copied out of the cache mount in the same step. The root package is
# the default member, so the CLI's package is named explicitly.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pigeon-server -p pigeon-cli --bin pigeond --bin pigeon \
    && mkdir -p /out \
    && cp target/release/pigeond target/release/pigeon /out/

FROM debian:bookworm-slim
# ca-certificates: for outgoing HTTPS (push providers). Nothing else: the
# binaries are self-contained apart from glibc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pigeon \
    && useradd --system --uid 10001 --gid pigeon --home-dir /var/lib/pigeon \
        --shell /usr/sbin/nologin pigeon \
    && install -d -m 0750 -o pigeon -g pigeon /var/lib/pigeon
COPY --from=build /out/pigeond /out/pigeon /usr/local/bin/

USER pigeon:pigeon
WORKDIR /var/lib/pigeon
VOLUME ["/var/lib/pigeon"]
# The public port must listen on all interfaces inside the container; the
# admin listener stays on the container's loopback (health check below).
ENV PIGEON_LISTEN=0.0.0.0:7443 \
    PIGEON_DATA_DIR=/var/lib/pigeon \
    RUST_LOG=info
EXPOSE 7443
# Graceful: SIGTERM kicks clients with SERVER_SHUTDOWN and flushes. Give
# `docker stop -t` more than timeouts.shutdown (30s by default).
STOPSIGNAL SIGTERM
# No curl in the image: bash's /dev/tcp asks the admin listener's /healthz
# on the container's loopback and passes on an HTTP 200.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7444 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["pigeond"]
CMD ["serve", "--log-json"]

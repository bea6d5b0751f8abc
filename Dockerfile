# flowhook container image.
#
#   docker build -t flowhook .
#   docker run -p 8080:8080 -v flowhook-data:/data \
#     -e FLOWHOOK__API__TOKEN=... \
#     -e FLOWHOOK__PROVIDERS__BIK__BASIC_AUTH=... \
#     -e FLOWHOOK__PROVIDERS__META__APP_SECRETS='["..."]' \
#     -e FLOWHOOK__PROVIDERS__META__VERIFY_TOKEN=... \
#     -e FLOWHOOK__PROVIDERS__GENERIC__SECRETS='["whsec_..."]' \
#     flowhook
#
# Secrets come only from the environment. The image ships config.toml unchanged, and its secrets
# are placeholders: the container listens on 0.0.0.0, and flowhook refuses to bind a
# non-loopback address while any secret is empty or a placeholder, so it exits with status 2
# until every variable above is set.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against placeholder sources, so that this layer is reused until
# Cargo.toml or Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The real sources, and the Postgres schema migrations the binary embeds. COPY keeps their
# (older) mtimes, so touch them for cargo to rebuild the crate.
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for outbound HTTPS; curl for the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin flowhook \
 && mkdir /data \
 && chown flowhook:flowhook /data

COPY --from=builder /src/target/release/flowhook /usr/local/bin/flowhook
COPY config.toml /etc/flowhook/config.toml

ENV FLOWHOOK__STORE__PATH=/data \
    FLOWHOOK__SERVER__BIND=0.0.0.0:8080 \
    FLOWHOOK__LOG__FORMAT=json

USER 10001:10001
VOLUME /data
EXPOSE 8080

# Assumes the port above; change both if FLOWHOOK__SERVER__BIND is overridden.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || exit 1

ENTRYPOINT ["flowhook", "--config", "/etc/flowhook/config.toml"]
CMD ["serve"]

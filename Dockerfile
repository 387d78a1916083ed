# Multi-stage build: compile in the Rust image, run from a small Debian image as a
# non-root user. The same image runs `serve` (default), `relay`, `migrate`, `seed`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY docs/openapi.yaml docs/openapi.yaml
COPY src src
COPY benches benches
COPY examples examples
COPY loadtest loadtest
COPY config config
COPY data data
# The commit for readtier_build_info (no .git in the build context):
#   docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=$GIT_COMMIT
RUN cargo build --release --locked --bin readtier \
 && strip target/release/readtier

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/readtier --create-home readtier
COPY --from=build /src/target/release/readtier /usr/local/bin/readtier
USER readtier
WORKDIR /var/lib/readtier
ENV READTIER_DATA_DIR=/var/lib/readtier \
    READTIER_LISTEN=0.0.0.0:8080 \
    READTIER_ADMIN_LISTEN=127.0.0.1:9090
# The admin listener (metrics, health) stays on loopback; a deployment that scrapes it
# sets READTIER_ADMIN_LISTEN=0.0.0.0:9090 on a network it trusts.
EXPOSE 8080 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/readtier"]
CMD ["serve"]

# syntax=docker/dockerfile:1
#
# Tasklane image: one image, two binaries. docker-compose.yml runs `tasklane-api`,
# `tasklane-api migrate` and `tasklane-worker` from it.

# --- build ----------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# sqlx query! macros (if any) check against the committed .sqlx/ instead of a live database.
ENV SQLX_OFFLINE=true
COPY . .
# Cache mounts keep the registry and target/ between builds; the binaries are copied out
# because the target/ cache is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --workspace --locked \
    && cp target/release/tasklane-api target/release/tasklane-worker /usr/local/bin/

# --- runtime --------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to managed databases / S3; curl: the compose healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin tasklane
COPY --from=builder /usr/local/bin/tasklane-api /usr/local/bin/tasklane-worker /usr/local/bin/
# Migrations are embedded in tasklane-api; the SQL ships too, for operators to read.
COPY migrations /app/migrations
WORKDIR /app
USER tasklane
# Production unless told otherwise: prod refuses default or weak secrets at start-up.
ENV TASKLANE_ENV=prod \
    TASKLANE_API_ADDR=0.0.0.0:8080 \
    TASKLANE_WORKER_ADDR=0.0.0.0:8081
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
CMD ["tasklane-api"]

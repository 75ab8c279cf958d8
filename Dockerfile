# The images Fenice runs as, from this source tree (docs/image.md):
#
#   docker build --target fenice          -t REGISTRY/fenice:VERSION .
#   docker build --target fenice-postgres -t REGISTRY/fenice-postgres:15-VERSION .
#
# `fenice` runs the operator, the app (`fenice app serve`) and the agents
# (backup and restore Jobs, which call pg_dump and pg_basebackup);
# `fenice-postgres` is PostgreSQL 15 with the same binary for archive_command
# (`fenice agent wal-push`) and restore_command (`fenice agent wal-fetch`).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# NB: --locked builds exactly the dependency versions in Cargo.lock.
RUN cargo build --release --locked --bin fenice && strip target/release/fenice

FROM docker.io/library/debian:bookworm-slim AS fenice
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/fenice /usr/local/bin/fenice
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/fenice"]

FROM docker.io/library/postgres:15-bookworm AS fenice-postgres
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# pg_basebackup in a backup Job is a replication connection, which the image's
# pg_hba.conf does not let in from other pods; the NetworkPolicy admits only
# the tenant's app and backup pods.
RUN printf '#!/bin/sh\necho "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"\n' \
        > /docker-entrypoint-initdb.d/10-replication.sh
COPY --from=build /src/target/release/fenice /usr/local/bin/fenice
USER 999:999

# Multi-stage build: compile in the Rust image, ship a small Debian runtime with only the binary,
# the default config and the OpenAPI document.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# perf/ holds the [[bench]] targets the manifest names; docs/openapi.json is compiled in.
COPY perf ./perf
COPY docs ./docs
# build.rs generates the gRPC code from proto/ (protox: no protoc needed in the image).
COPY build.rs ./
COPY proto ./proto
RUN cargo build --release --bin smsgw && strip target/release/smsgw

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /var/lib/smsgw smsgw \
 && mkdir -p /var/lib/smsgw /etc/smsgw && chown smsgw /var/lib/smsgw
COPY --from=build /src/target/release/smsgw /usr/local/bin/smsgw
COPY config/ /etc/smsgw/
USER smsgw
WORKDIR /var/lib/smsgw
# REST 8088, gRPC 44044. io_uring may be refused by the container's seccomp profile: the
# runtime then falls back to epoll by itself (logged per shard).
# The JWT server key must come from the environment (SMSGW_JWT_SECRET, >= 32 bytes) or a
# mounted secret file (security.jwt_secret_file); apps are read from /etc/smsgw/apps.toml.
EXPOSE 8088 44044
ENTRYPOINT ["/usr/local/bin/smsgw"]
CMD ["serve", "--config", "/etc/smsgw/smsgw.toml", "--rules", "/etc/smsgw/smpp_rules.toml"]

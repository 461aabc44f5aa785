# hcn serve in a container: built in one stage, run in a slim one as a non-root user.
#   docker build -t hcn-prerank .
#   docker run -p 50051:50051 -p 8080:8080 -v /path/to/models:/models:ro hcn-prerank \
#       --model /models/model.safetensors --tokens /models/tokens.safetensors --candidates /models/candidates.safetensors
# Not built by CI (its machines have no Docker engine; deploy/k8s is schema-validated there).
# Built and run in session 8 (Docker 20.10, with stand-ins for the two base images, as Docker Hub
# was unreachable: bookworm from debootstrap, Rust 1.95 from rustup) and checked with
# scripts/docker-smoke.sh: ready, scores as `hcn score` does, uid 10001 on a read-only root,
# admin reload, SIGTERM drains and exits 0.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The CPU build with the service (default features). For GPUs: --features cuda, with nvcc from
# scripts/install-nvcc.sh and a CUDA runtime image below.
RUN cargo build --release --locked --bin hcn && strip target/release/hcn

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home hcn
COPY --from=build /src/target/release/hcn /usr/local/bin/hcn
# The bundled model, so the image answers out of the box; mount your own at /models.
COPY --from=build /src/weights /opt/hcn/weights
USER 10001
EXPOSE 50051 8080
# Admin stays on the pod's loopback (reload by `kubectl exec … curl`, or SIGHUP).
ENTRYPOINT ["/usr/local/bin/hcn", "serve", "--grpc", "0.0.0.0:50051", "--http", "0.0.0.0:8080", "--admin", "127.0.0.1:8081"]
CMD ["--model", "/opt/hcn/weights/hcn-public.safetensors", "--tokens", "/opt/hcn/weights/tokens.safetensors", "--candidates", "/opt/hcn/weights/candidates.safetensors"]

# evalpool: one static binary; every service of docker-compose.yml runs it.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/evalpool ./cmd/evalpool

# Debian slim rather than scratch: `evalpool executor --exec` runs sh -c.
FROM debian:bookworm-slim
# ca-certificates: https executors and rediss:// need the system's roots.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home evalpool
COPY --from=build /out/evalpool /usr/local/bin/evalpool
USER evalpool
ENTRYPOINT ["evalpool"]

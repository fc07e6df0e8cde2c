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
# python3: the example grader (deploy/grader/grade.py) the stack runs.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home evalpool \
    && install -d -o evalpool -g evalpool -m 0700 /var/lib/evalpool/secrets
# The compose stack's secrets volume is mounted here: a new volume takes
# this directory's owner, so `evalpool secrets` can write to it.
COPY --from=build /out/evalpool /usr/local/bin/evalpool
COPY deploy/grader/grade.py /usr/local/bin/evalpool-grade
COPY deploy/grader/suite.jsonl /usr/local/share/evalpool/suite.jsonl
USER evalpool
ENTRYPOINT ["evalpool"]

# evalpool: run `make help` for the targets.
GO       ?= go
BIN      ?= bin/evalpool
PKGS     ?= ./...

.DEFAULT_GOAL := help
SHELL         := /bin/bash
.SHELLFLAGS   := -o pipefail -c

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/evalpool
	$(GO) build -o $(BIN) ./cmd/evalpool

.PHONY: test
test: ## Run every test with the race detector against a real redis-server the tests start; one line per test as it ends
	$(GO) tool gotestsum --format testname --format-hide-empty-pkg -- -race -count=1 -timeout 15m $(PKGS)

# A count, not a duration: a -fuzztime duration races Go's fuzzing
# coordinator at its deadline and can fail with "context deadline exceeded"
# and no failing input (golang/go#75804); a count has no deadline to race.
FUZZTIME ?= 100000x

.PHONY: fuzz
fuzz: ## Fuzz payload decoding and executor-answer parsing, FUZZTIME (executions) each; seed corpus in testdata/fuzz
	$(GO) test -run '^$$' -fuzz '^FuzzParseEval$$' -fuzztime $(FUZZTIME) ./tasks
	$(GO) test -run '^$$' -fuzz '^FuzzParseCleanup$$' -fuzztime $(FUZZTIME) ./tasks
	$(GO) test -run '^$$' -fuzz '^FuzzParseResult$$' -fuzztime $(FUZZTIME) ./executor

.PHONY: chaos
chaos: ## The chaos suite: 1,200 evals (600 in three runs of weights 1, 2, 3) on real processes under seeded faults (EVALPOOL_CHAOS_SEED=N replays)
	$(GO) test -tags chaos -run '^TestChaos$$' -count=1 -timeout 20m -v ./cmd/evalpool | tee chaos.out | grep -E '^(chaos seed|--- |ok|FAIL|PASS)'

.PHONY: sentinel
sentinel: ## A Sentinel failover under a run of evals, on real processes (about 2 min)
	$(GO) test -race -tags sentinel -run '^TestSentinelFailoverUnderLoad$$' -count=1 -timeout 10m -v ./cmd/evalpool | tee sentinel.out | grep -E '^(sentinel:|--- |ok|FAIL|PASS)'

.PHONY: test-browser
test-browser: ## Drive the pool page and Asynqmon in headless Chromium (needs the chromium package)
	$(GO) test -race -count=1 -tags browser -run Chromium ./dashboard

.PHONY: compose-config
compose-config: ## Validate docker-compose.yml with docker-compose v1 and the Compose v2 loader (deploy/composecheck); no engine needed
	docker-compose -f docker-compose.yml config -q
	cd deploy/composecheck && $(GO) run . ../../docker-compose.yml

.PHONY: compose-up
compose-up: ## Build the image and start Redis, 3 executors, 2 workers and the dashboard (needs Docker)
	docker compose up -d --build

.PHONY: compose-down
compose-down: ## Stop and remove the compose services (the Redis volume stays)
	docker compose down

.PHONY: compose-images
compose-images: ## For an engine with no registry: stand-ins for the stack's base images (debootstrap) and `docker compose` if missing
	deploy/images/build.sh
	deploy/images/compose-plugin.sh

.PHONY: compose-test
compose-test: ## Smoke-test the stack: up, a run under faults, Prometheus, stop, down (needs Docker; about 10 min)
	$(GO) vet -tags compose ./deploy/composetest
	@mkdir -p bin # the log goes where the image's build context ignores it: a file changing there would rebuild the image
	$(GO) test -tags compose -run '^TestComposeStack$$' -count=1 -timeout 60m -v ./deploy/composetest 2>&1 | tee bin/compose.out | grep -E '^(compose-test:|    compose_test.go|--- |ok|FAIL|PASS)'

.PHONY: lint
lint: ## gofmt, go vet, go mod tidy -diff, and a cross-build for Windows and macOS
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags browser ./dashboard
	$(GO) vet -tags chaos,sentinel,bench ./...
	$(GO) mod tidy -diff
	cd deploy/composecheck && $(GO) vet . && $(GO) mod tidy -diff
	GOOS=windows $(GO) build ./...
	GOOS=darwin $(GO) build ./...

.PHONY: bench
bench: ## Measure everything side by side and write BENCHMARKS.md (EVALPOOL_BENCH_RUNS, default 5 runs each)
	$(GO) test -tags bench -run '^TestWriteBenchmarks$$' -count=1 -timeout 60m -v ./internal/benchmarks | tee bench.out | grep -E '^(    harness|--- |ok|FAIL)'

.PHONY: demo
demo: ## Run the zero-setup demo: embedded Redis, simulated executors, a worker, 200 evals, a report
	$(GO) run ./cmd/evalpool demo $(DEMOFLAGS)

.PHONY: clean
clean: ## Remove build output
	rm -rf bin

# The README's test command. Besides Go it needs promtool, prometheus,
# systemd-analyze and chromium (the browser test of examples/bff), which it
# installs from Debian's packages when missing.
.PHONY: test deps fuzz bench conformance cluster-test reliability-test interop-test

test: deps
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above" && false)
	go vet ./...
	go vet -tags cluster ./cmd/tokend
	go vet -tags reliability ./cmd/tokend
	go vet -tags interop ./cmd/tokend
	# The generated query code must match queries/*.sql: run 'go tool sqlc generate' after editing them.
	go tool sqlc diff
	go test -race -count=1 ./...

# Installs only the packages of missing tools, never upgrading one (.ci/deps).
deps:
	@.ci/deps

# Each fuzz target for a while (FUZZTIME=2m make fuzz for longer). The
# corpora under */testdata/fuzz run as plain tests in make test.
FUZZTIME ?= 30s
fuzz:
	go test -run '^$$' -fuzz '^FuzzParseToken$$' -fuzztime $(FUZZTIME) ./domain
	go test -run '^$$' -fuzz '^FuzzParseScope$$' -fuzztime $(FUZZTIME) ./domain
	go test -run '^$$' -fuzz '^FuzzParseCommands$$' -fuzztime $(FUZZTIME) ./api
	go test -run '^$$' -fuzz '^FuzzParseQueries$$' -fuzztime $(FUZZTIME) ./api
	go test -run '^$$' -fuzz '^FuzzAuditQueryString$$' -fuzztime $(FUZZTIME) ./api
	go test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./events
	go test -run '^$$' -fuzz '^FuzzResolve$$' -fuzztime $(FUZZTIME) ./clientaddr
	go test -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME) ./pii
	go test -run '^$$' -fuzz '^FuzzParseSealed$$' -fuzztime $(FUZZTIME) ./pii
	go test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./dpop
	go test -run '^$$' -fuzz '^FuzzNormalizeURL$$' -fuzztime $(FUZZTIME) ./dpop

# The go test benchmarks behind docs/benchmarks.md; the rotation benchmark
# is go run ./cmd/tokenbench --baseline -k 64.
bench:
	go test -run '^$$' -bench ProjectionRebuild -benchtime 5x ./projections
	go test -run '^$$' -bench Introspect -benchtime 2s ./cmd/tokend
	go test -run '^$$' -bench Load -benchtime 2s ./events
	go test -run '^$$' -bench 'SealEvent|RevealEvent' -benchtime 2s ./events
	go test -run '^$$' -bench Verify -benchmem ./dpop

# The three-node cluster tests: a node fails under load, introspection reads
# the leader, an erasure on replicated buckets (about 20 s).
cluster-test:
	go test -tags cluster -race -count=1 -run TestCluster -v ./cmd/tokend

# kill -9 under load, a NATS outage under load, tokend frozen with SIGSTOP (about two minutes).
reliability-test:
	go test -tags reliability -race -count=1 -run 'TestCrash|TestBrokerOutage|TestFreeze' -v ./cmd/tokend

# The outside contract driver (CI only: it lives beside the repository in
# the project's shared workspace, not in a clone). It checks the v1 layout,
# which served the audit API on --http, so tokend runs with
# --v1-open-audit (loopback only) for it.
CONFORMANCE ?= .
conformance:
	@test -d ../shared/conformance || { echo "make conformance needs ../shared/conformance (the project's CI workspace); a clone has none"; exit 1; }
	TOKEND_V1_OPEN_AUDIT=true go -C ../shared/conformance run . -repo "$(CURDIR)" -run '$(CONFORMANCE)'

# --oauth-http against stock Node OAuth clients with their defaults
# (examples/interop/node: oauth4webapi, openid-client, jose); needs node 20
# and npm, and the npm registry (or npm's cache).
interop-test:
	npm ci --prefix examples/interop/node --silent --no-audit --no-fund
	go test -tags interop -count=1 -run TestInterop -v ./cmd/tokend

# voipbin: one Go workspace (go.work), one module per service plus pkg/.
# `make help` lists the targets. Local services (MariaDB, Redis, RabbitMQ) are managed by
# deploy/local/services.sh; the stack itself is run by deploy/local/run.sh.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

export PATH := $(if $(wildcard /usr/local/go/bin/go),/usr/local/go/bin:)$(PATH)
# The Go release every go.mod names (`go 1.27.3`): the first without the standard library's known
# vulnerabilities that our code calls. An older installed go command fetches it from the module
# proxy on first use and runs it; `make GOTOOLCHAIN=go1.27.4 …` tries another.
export GOTOOLCHAIN := go1.27.3

TEST_TIMEOUT ?= 15m
TESTFLAGS ?=
BENCH ?= .
BENCHFLAGS ?=

# Shell snippets, run inside recipes so that a failing `go list` fails the target.
modules := go list -m -f '{{.Dir}}'
packages := go list -m -f '{{.Dir}}/...' | sed 's|^$(CURDIR)/|./|'
header = printf '\n==== %s ====\n' "$(1)"
workspace = test -f go.work || { echo 'no go.work at the repository root' >&2; exit 1; }

.PHONY: help run build migrate test fault bench lint fmt tidy clean vulncheck

help: ## list the targets
	@echo 'Usage: make TARGET [VAR=value]'
	@echo
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 12
	@echo
	@echo 'Variables: TESTFLAGS (e.g. -v -run TestX), TEST_TIMEOUT ($(TEST_TIMEOUT)), BENCH (regexp, $(BENCH)), BENCHFLAGS'

run: ## run the whole stack locally (services, build, migrate, start; Ctrl-C stops)
	@bash deploy/local/run.sh run

build: ## build every binary into ./bin
	@bash deploy/local/run.sh build

migrate: ## apply every service's database migrations
	@bash deploy/local/run.sh migrate

test: ## go test -race in every module (starts MariaDB, Redis, RabbitMQ first)
	@$(workspace)
	@$(call header,services)
	@bash deploy/local/services.sh ensure
	@$(call header,test peers: sipp and python)
	@bash deploy/local/services.sh testdeps
	@$(call header,$(strip go test -race -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS)))
	@pkgs=$$($(packages)); echo $$pkgs; go test -race -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $$pkgs

FAULT_TIMEOUT ?= 20m

fault: ## fault test (4-8 min): kill each part under load on own MariaDB/RabbitMQ/Redis, check the invariants
	@$(workspace)
	@$(call header,$(strip VOIPBIN_FAULT=1 go test -race -count=1 -v -run '^TestFault$$' ./e2e/))
	@VOIPBIN_FAULT=1 go test -race -count=1 -timeout $(FAULT_TIMEOUT) -v -run '^TestFault$$' $(TESTFLAGS) ./e2e/

bench: ## benchmarks in every module (BENCH=regexp to filter)
	@$(workspace)
	@$(call header,services)
	@bash deploy/local/services.sh ensure
	@$(call header,$(strip go test -run '^$$' -bench '$(BENCH)' -benchmem $(BENCHFLAGS)))
	@pkgs=$$($(packages)); echo $$pkgs; go test -run '^$$' -bench '$(BENCH)' -benchmem $(BENCHFLAGS) $$pkgs

lint: ## gofmt, go vet, go mod tidy -diff and govulncheck over every module
	@$(workspace)
	@$(call header,gofmt -l)
	@out=$$(gofmt -l $$($(modules)) | sed 's|^$(CURDIR)/||'); \
	if [[ -n $$out ]]; then echo "$$out"; echo 'these files need gofmt (make fmt)'; exit 1; fi; \
	echo ok
	@$(call header,go vet)
	@pkgs=$$($(packages)); echo $$pkgs; go vet $$pkgs
	@$(call header,go mod tidy -diff)
	@fail=0; for dir in $$($(modules)); do \
		echo "$${dir#$(CURDIR)/}"; \
		(cd "$$dir" && go mod tidy -diff) || { echo "  go.mod/go.sum not tidy (make tidy)"; fail=1; }; \
	done; exit $$fail
	@$(call header,govulncheck (offline database, deploy/local/vulncheck.sh))
	@bash deploy/local/vulncheck.sh

vulncheck: ## govulncheck over every module against the offline database (part of make lint)
	@bash deploy/local/vulncheck.sh

fmt: ## gofmt -w every module
	@$(workspace)
	@gofmt -l -w $$($(modules)) | sed 's|^$(CURDIR)/||'

tidy: ## go mod tidy in every module
	@$(workspace)
	@for dir in $$($(modules)); do echo "$${dir#$(CURDIR)/}"; (cd "$$dir" && go mod tidy); done

clean: ## remove build and coverage output
	rm -rf bin/ coverage.out coverage.html *.coverprofile

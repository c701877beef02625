# astrtc: one spec file to a WebRTC-ready Asterisk. `make up` and `make test` do all set-up
# themselves on a fresh Debian host (they need root for apt and dockerd).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PBX_DIR ?= pbx
DOMAIN ?= localhost
ASTRTC := target/release/astrtc
SPEC := $(PBX_DIR)/astrtc.toml
DEPLOY := $(PBX_DIR)/deploy
# Package downloads inside the image build trust what this host trusts (TLS-inspecting proxies).
EXTRA_CA := $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--extra-ca /etc/ssl/certs/ca-certificates.crt)

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## install and start what the tools need: build tools (cc, cmake), Docker engine, compose v2, base image
	bash scripts/host-setup.sh

deps-build: ## install what `cargo build` needs besides Rust: a C toolchain and cmake (bundled libopus)
	bash scripts/host-setup.sh build

$(ASTRTC): Cargo.toml Cargo.lock build.rs $(shell find src images templates -type f)
	cargo build --release --locked

up: deps $(ASTRTC) ## build and start the default WebRTC stack (self-signed) on this host
	@test -f $(SPEC) || $(ASTRTC) init --dir $(PBX_DIR) --domain $(DOMAIN)
	$(ASTRTC) render --spec $(SPEC) --out $(DEPLOY)
	$(ASTRTC) build --spec $(SPEC) $(EXTRA_CA)
	cd $(DEPLOY) && docker compose up -d --wait --force-recreate
	@$(ASTRTC) info --spec $(SPEC) --out $(DEPLOY)

down: ## stop the stack started by `make up` (keeps the spec, secrets and CA)
	@if [ -f $(DEPLOY)/compose.yaml ]; then cd $(DEPLOY) && docker compose down; else echo "nothing to stop"; fi

deps-clients: ## install the real clients the tests drive: chromium, baresip, playwright-core
	bash scripts/host-setup.sh clients

deps-helm: ## install the chart tools into target/tools: helm 3 and 4, kubernetes-validate, cert-manager CRD schemas, checkov (pinned)
	bash scripts/host-setup.sh helm

deps-acme: ## install Pebble, the ACME test server
	bash scripts/host-setup.sh acme

deps-audit: ## install the security audit's tools (Debian): sipvicious, testssl.sh, nmap, tcpdump
	bash scripts/host-setup.sh audit

deps-examples: ## install the example suites' runners: Playwright (npm), pytest and websockets (PyPI)
	bash scripts/host-setup.sh examples

deps-net: ## install iproute2, nftables, coturn: the media tests build namespaces, NATs, firewalls and a TURN relay
	bash scripts/host-setup.sh net

deps-load: ## install the load generators: SIPp
	bash scripts/host-setup.sh load

test: deps deps-clients deps-helm deps-acme deps-audit deps-examples deps-net deps-load ## every test: unit, snapshots, CLI, hostile corpus, image, real browser and SIP calls, the security audit
	bash scripts/test.sh

test-unit: deps-build ## the tests that need no Docker engine (the others are counted as skipped)
	ASTRTC_SKIP_DOCKER=1 bash scripts/test.sh

lint: deps-build ## formatting and clippy, warnings as errors
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

bench: $(ASTRTC) deps-load ## benchmarks: render time, compose up -> healthy, storms, ACME, and call capacity per kind (astrtc bench calls)
	bash scripts/bench.sh

bench-calls: $(ASTRTC) deps ## call capacity only: astrtc bench calls for each kind, the sizing table, tunings A/B/A; plots in target/bench/
	bash scripts/bench-calls.sh

bench-cluster: $(ASTRTC) deps ## cluster capacity: astrtc bench calls through the edge with 1 and 2 pool servers, CPU per call of edge, relay and pool; the sizing table
	bash scripts/bench-cluster.sh

profile-calls: $(ASTRTC) deps ## where a call's CPU goes: perf samples Asterisk and the generator during 40 held webrtc-to-sip calls (PROFILE_KIND, PROFILE_CALLS)
	bash scripts/profile-calls.sh

fuzz: ## fuzz spec -> outputs with an oracle for 10 minutes (ASTRTC_FUZZ_SECONDS=N for another duration)
	ASTRTC_FUZZ_SECONDS=$${ASTRTC_FUZZ_SECONDS:-600} cargo test --locked --test tests fuzz::fuzz_for_a_while -- --ignored --nocapture

review-snapshots: ## accept changed insta snapshots after reviewing the diff
	INSTA_UPDATE=always cargo test --locked --test tests render::snapshots
	git diff --stat tests/snapshots

.PHONY: help deps deps-build deps-clients deps-helm deps-acme deps-audit deps-examples deps-net deps-load up down test test-unit lint bench bench-calls bench-cluster profile-calls fuzz review-snapshots

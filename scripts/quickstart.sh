#!/usr/bin/env bash
# Sets up, builds and runs modula's main job on the bundled tiny model (the README's
# first command).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
exec build/apps/modula/modula quickstart "$@"

#!/usr/bin/env bash
# Sets up, builds and runs modula's main job on the bundled tiny model (the README's
# first command).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Only what the main job needs (the CLI); scripts/test.sh builds the rest.
MODULA_TARGETS=modula_cli scripts/build.sh
exec build/apps/modula/modula quickstart "$@"

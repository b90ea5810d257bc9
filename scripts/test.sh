#!/bin/sh
# The whole test suite, from a clean checkout after `npm ci`: Debian packages the tests use,
# a build (the CLI tests run bin/vmvault), then every test.
set -eu
cd "$(dirname "$0")/.."
sh scripts/ci-deps.sh
npm run --silent build
npx tsc -p tsconfig.test.json
npx vitest run "$@"

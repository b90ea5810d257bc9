#!/bin/sh
# The whole test suite, from a clean checkout after `npm ci`: Debian packages the tests use,
# the many-at-once BLAKE2b library (npm ci ran before its Debian sources were there), a build
# (the CLI tests run bin/vmvault), then every test.
set -eu
cd "$(dirname "$0")/.."
sh scripts/ci-deps.sh
sh native/build-blake2b.sh
npm run --silent build
npx tsc -p tsconfig.test.json
npx vitest run "$@"

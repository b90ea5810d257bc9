// Makes the V8 code caches of the files every command compiles (src/util/code-cache.ts): the CLI
// bundle and libsodium's two scripts, into dist/code-cache/. `npm run build` runs this with
// the V8 flags of bin/vmvault (V8 refuses a cache made under other flags), after the bundle.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { loadForCache, writeCodeCache } from "../dist/util/code-cache.js";

const require = createRequire(import.meta.url);
const bundle = fileURLToPath(new URL("../dist/vmvault.cjs", import.meta.url));
const wrappers = require.resolve("libsodium-wrappers");
const libsodium = createRequire(wrappers).resolve("libsodium");
// libsodium first: libsodium-wrappers requires it, and gets this instance from require's cache.
const loaded = [loadForCache(bundle), loadForCache(libsodium), loadForCache(wrappers)];
// Once libsodium is initialised, the caches hold what its start-up compiled as well.
await loaded[2].exports.ready;
writeCodeCache(fileURLToPath(new URL("../dist/code-cache/", import.meta.url)), loaded);

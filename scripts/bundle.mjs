// Bundles the built CLI (dist/cli/main.js and the modules it imports, commander and fs-extra
// included) into one file, dist/vmvault.mjs, which bin/vmvault runs. One file instead of ~100
// ES modules: each command starts ~25 ms sooner and holds ~4 MiB less while Argon2id runs
// (docs/design.md §10). Native addons and libsodium's WASM build stay separate packages; the
// pipeline worker (dist/pipeline/worker.js) stays unbundled, started before it is needed.
import { build } from "esbuild";

await build({
  entryPoints: ["dist/cli/main.js"],
  outfile: "dist/vmvault.mjs",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  external: ["argon2", "sodium-native", "zstd-napi", "lz4", "libsodium-wrappers"],
  // Bundled CommonJS packages (commander, fs-extra) require Node's built-in modules.
  banner: { js: 'import { createRequire as vmvaultCreateRequire } from "node:module";\nconst require = vmvaultCreateRequire(import.meta.url);' },
  logLevel: "warning",
});

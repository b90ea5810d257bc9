// Bundles the built CLI (dist/cli/main.js and the modules it imports, commander and fs-extra
// included) into one CommonJS file, dist/vmvault.cjs, which bin/vmvault (CommonJS too) runs.
// One file instead of ~100 ES modules: each command starts ~25 ms sooner and holds ~4 MiB less
// while Argon2id runs; CommonJS instead of an ES module: Node.js never starts its ES module
// loader in the main thread, another 1.7 MiB and 10 ms (docs/design.md §10). Native addons and
// libsodium's WASM build stay separate packages, loaded with require(); the pipeline worker
// (dist/pipeline/worker.js) stays unbundled, started before it is needed.
import { build } from "esbuild";

// commander requires child_process at load, for executable subcommands vmvault does not have;
// loading it costs 0.5 MiB while Argon2id runs (docs/design.md §10). commander gets a stand-in
// that loads it on first use.
const lazyChildProcess = {
  name: "lazy-child-process",
  setup(b) {
    b.onResolve({ filter: /^(node:)?child_process$/ }, (args) => (args.importer.includes("/node_modules/commander/") ? { path: "child_process", namespace: "lazy-builtin" } : undefined));
    b.onLoad({ filter: /.*/, namespace: "lazy-builtin" }, () => ({
      contents: 'let real;\nmodule.exports = new Proxy({}, { get: (_, key) => (real ??= require("node:child_process"))[key] });\n',
      loader: "js",
    }));
  },
};

await build({
  entryPoints: ["dist/cli/main.js"],
  outfile: "dist/vmvault.cjs",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  external: ["argon2", "sodium-native", "zstd-napi", "lz4", "libsodium-wrappers"],
  // import("libsodium-wrappers") becomes require(): an import() would start the ES module loader.
  supported: { "dynamic-import": false },
  // The modules find their neighbours (the worker, the native helper) from import.meta.url,
  // which a CommonJS file spells as its own file name.
  define: { "import.meta.url": "vmvaultModuleUrl" },
  banner: { js: 'const vmvaultModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  plugins: [lazyChildProcess],
  logLevel: "warning",
});

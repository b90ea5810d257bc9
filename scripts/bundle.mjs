// Bundles the built CLI (dist/cli/main.js and the modules it imports, commander and fs-extra
// included) into one CommonJS file, dist/vmvault.cjs, which bin/vmvault (CommonJS too) runs.
// One file instead of ~100 ES modules: each command starts ~25 ms sooner and holds ~4 MiB less
// while Argon2id runs; CommonJS instead of an ES module: Node.js never starts its ES module
// loader in the main thread, another 1.7 MiB and 10 ms (docs/design.md §10). Native addons and
// libsodium's WASM build stay separate packages, loaded with require(); the pipeline worker is
// bundled the same way into dist/worker.cjs.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { build } from "esbuild";
import { SELF_WRAPPED, writeAtomic } from "../dist/util/code-cache.js";

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

// Every bundle: one CommonJS file for Node.js 20. The modules find their neighbours (the worker,
// the native helper, the code caches) from import.meta.url, which a CommonJS file spells as its
// own file name.
const cjsBundle = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  define: { "import.meta.url": "vmvaultModuleUrl" },
  banner: { js: 'const vmvaultModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  logLevel: "warning",
  // Non-ASCII characters escaped: V8 keeps a script's source as long as its functions may still
  // be compiled, in two bytes per character once one character is outside Latin-1.
  charset: "ascii",
};

// Native addons and libsodium's WASM build stay packages of their own.
const external = ["argon2", "sodium-native", "zstd-napi", "lz4", "libsodium-wrappers", "ssh2", "@aws-sdk/client-s3", "@aws-sdk/credential-provider-ini", "@smithy/signature-v4"];

// Self-wrapped (src/util/code-cache.ts): the file is the function expression Node.js would wrap
// it in, so that the code-cache loader can give V8 the file itself, mapped, as the script's
// source, instead of a copy held in V8's heap through Argon2id. Only that loader runs it
// (bin/vmvault); written below, in ASCII and under a new name renamed into place, so a command
// still running keeps the file it mapped.
const cli = await build({
  entryPoints: ["dist/cli/main.js"],
  outfile: "dist/vmvault.cjs",
  ...cjsBundle,
  banner: { js: SELF_WRAPPED.head + cjsBundle.banner.js },
  footer: { js: SELF_WRAPPED.tail },
  write: false,
  external,
  // import() becomes require(): an import() would start the ES module loader.
  supported: { "dynamic-import": false },
  plugins: [lazyChildProcess],
});

// The pipeline worker as one CommonJS file too, which the CLI bundle starts (src/pipeline/pool.ts):
// a worker loading ~15 ES modules through the ES module loader took 25 ms longer to be ready.
await build({
  entryPoints: ["dist/pipeline/worker.js"],
  outfile: "dist/worker.cjs",
  ...cjsBundle,
  external,
});

// bin/vmvault loads the bundle through its code cache with this (src/util/code-cache.ts).
await build({
  entryPoints: ["dist/util/code-cache.js"],
  outfile: "dist/cached-require.cjs",
  ...cjsBundle,
});

// esbuild's charset escapes strings, template literals and identifiers, not the comments it keeps
// (the sources' JSDoc inside classes): escaped here too, so each bundle's source is one byte per
// character (the CLI's: 1.1 MB instead of 2.3 MB while Argon2id runs; docs/design.md §10), and the
// CLI's can be given to V8 as it is on disk. Each is written under a new name and renamed into
// place.
const ascii = (text) => text.replace(/[^\u0000-\u007f]/gu, (c) => `\\u{${c.codePointAt(0)?.toString(16)}}`);
const [cliOutput] = cli.outputFiles;
if (cli.outputFiles.length !== 1 || cliOutput === undefined) throw new Error("esbuild gave the CLI bundle as more than one file");
writeAtomic("dist/vmvault.cjs", ascii(cliOutput.text));
const worker = readFileSync("dist/worker.cjs", "utf8");
if (ascii(worker) !== worker) writeAtomic("dist/worker.cjs", ascii(worker));

// The code caches, made under bin/vmvault's V8 flags (its first line: node and the flags after it).
const shebang = readFileSync("bin/vmvault", "utf8").split("\n", 1)[0] ?? "";
const words = shebang.split(/\s+/);
const flags = words.slice(words.indexOf("node") + 1).filter((w) => w.startsWith("--"));
const made = spawnSync(process.execPath, [...flags, "scripts/code-cache.mjs"], { stdio: "inherit" });
if (made.status !== 0) throw new Error(`scripts/code-cache.mjs failed (${made.status ?? made.signal})`);

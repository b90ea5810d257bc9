// Makes the V8 code caches of the files every command compiles (src/util/code-cache.ts): the CLI
// bundle and libsodium's two scripts, into dist/code-cache/. `npm run build` runs this with
// the V8 flags of bin/vmvault (V8 refuses a cache made under other flags), after the bundle.
//
// A cache holds the functions compiled by the time it is made. The CLI's is made once the CLI
// has listed the snapshots of a throwaway repository (made with the weak test parameters of
// Argon2id, by another process, in a temporary folder): it then holds what every command runs up
// to its unlock as well, so V8 need not go back to the bundle's source, which is mapped from its
// file, to compile those functions while Argon2id runs (1.1 MB of the file's pages in memory
// then, 0.2 MB with this; docs/design.md §10). No data of that run is in a cache: V8 writes code.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadForCache, writeCodeCache } from "../dist/util/code-cache.js";

const require = createRequire(import.meta.url);
const bundle = fileURLToPath(new URL("../dist/vmvault.cjs", import.meta.url));
const bin = fileURLToPath(new URL("../bin/vmvault", import.meta.url));
const wrappers = require.resolve("libsodium-wrappers");
const libsodium = createRequire(wrappers).resolve("libsodium");
// libsodium first: libsodium-wrappers requires it, and gets this instance from require's cache.
const loaded = [loadForCache(bundle), loadForCache(libsodium), loadForCache(wrappers)];
// Once libsodium is initialised, the caches hold what its start-up compiled as well.
await loaded[2].exports.ready;
await listThrowawayRepository(loaded[0].exports);
writeCodeCache(fileURLToPath(new URL("../dist/code-cache/", import.meta.url)), loaded);

/** `vmvault snapshots` in this process, against a new repository in a temporary folder, quietly. */
async function listThrowawayRepository(cli) {
  const dir = mkdtempSync(join(tmpdir(), "vmvault-code-cache-"));
  const repo = join(dir, "repo");
  const env = { VMVAULT_INSECURE_TEST_KDF: "1", VMVAULT_PASSPHRASE: "code cache build only", VMVAULT_STATE_DIR: join(dir, "state") };
  const args = ["--repo", repo, "--user", "admin"];
  try {
    const init = spawnSync(process.execPath, [bin, ...args, "init"], { env: { ...process.env, ...env }, encoding: "utf8" });
    if (init.status !== 0) throw new Error(`vmvault init for the code cache failed (${init.status ?? init.signal}): ${init.stderr}`);
    Object.assign(process.env, env);
    const [out, err] = [process.stdout.write, process.stderr.write];
    process.stdout.write = process.stderr.write = () => true;
    let code;
    try {
      code = await cli.main([...args, "snapshots"]);
    } finally {
      process.stdout.write = out;
      process.stderr.write = err;
      for (const name of Object.keys(env)) delete process.env[name];
    }
    if (code !== 0) throw new Error(`vmvault snapshots for the code cache exited with ${code}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

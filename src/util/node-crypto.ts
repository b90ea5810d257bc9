/**
 * node:crypto, loaded where it is first used instead of with the CLI: loading it (with the
 * stream modules it brings) takes 15-17 ms and up to 2.4 MiB, which every command held while
 * Argon2id ran, where the peak of its memory is (docs/design.md §10). Node.js keeps the module
 * once loaded, so later calls cost a lookup.
 */
export function nodeCrypto(): typeof import("node:crypto") {
  return process.getBuiltinModule("node:crypto");
}

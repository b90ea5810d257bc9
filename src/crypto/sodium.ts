import type sodiumModule from "libsodium-wrappers";

export type Sodium = typeof sodiumModule;

/**
 * Resolves to the initialised libsodium (WASM) module, loaded on first use: a pipeline worker
 * with the native binding never loads it (its WASM memory costs ~10 MiB per thread).
 */
export async function loadSodium(): Promise<Sodium> {
  const sodium = (await import("libsodium-wrappers")).default;
  await sodium.ready;
  return sodium;
}

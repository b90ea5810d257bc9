import type sodiumModule from "libsodium-wrappers";
import { createRequire } from "node:module";
import { requireCached } from "../util/code-cache.js";

export type Sodium = typeof sodiumModule;

/**
 * Resolves to the initialised libsodium (WASM) module, loaded on first use (its WASM memory
 * costs ~10 MiB per thread). Both of its scripts load through the code cache `npm run build`
 * makes (util/code-cache.ts): compiling libsodium's 900 KB script from source costs each
 * thread 40-60 ms.
 */
export async function loadSodium(): Promise<Sodium> {
  const wrappers = createRequire(import.meta.url).resolve("libsodium-wrappers");
  // libsodium-wrappers requires libsodium, which then comes from require's cache.
  requireCached(createRequire(wrappers).resolve("libsodium"));
  const sodium = requireCached(wrappers).exports as Sodium;
  await sodium.ready;
  return sodium;
}

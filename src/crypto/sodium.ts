import sodiumModule from "libsodium-wrappers";

export type Sodium = typeof sodiumModule;

/** Resolves to the initialised libsodium (WASM) module. */
export async function loadSodium(): Promise<Sodium> {
  await sodiumModule.ready;
  return sodiumModule;
}

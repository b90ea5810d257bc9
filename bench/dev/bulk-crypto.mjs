// CPU-time speed of the bulk backends on 16 KiB chunks: node bench/dev/bulk-crypto.mjs
import { loadBulkCrypto } from "../../dist/crypto/bulk.js";
const CS = 16384, N = 512 << 20;
const data = new Uint8Array(64 << 20); for (let i = 0; i < data.length; i += 4096) data[i] = i & 255;
const key = new Uint8Array(32).fill(7), nonce = new Uint8Array(24), ad = new Uint8Array(36);
const out = new Uint8Array(CS + 16), id = new Uint8Array(32), back = new Uint8Array(CS);
for (const name of ["native", "wasm", "hybrid"]) {
  const b = await loadBulkCrypto(name);
  const time = (label, fn) => { const c = process.cpuUsage(); for (let done = 0; done < N; done += CS) fn(data.subarray(done % data.length, (done % data.length) + CS)); const u = process.cpuUsage(c); console.log(`${name} ${label}: ${(N / ((u.user + u.system) / 1e6) / 1e6).toFixed(0)} MB/s`); };
  time("keyed BLAKE2b-256", (c) => b.chunkId(key, c, id));
  time("XChaCha20-Poly1305 encrypt", (c) => b.encryptInto(key, nonce, c, ad, out));
  b.encryptInto(key, nonce, data.subarray(0, CS), ad, out);
  time("XChaCha20-Poly1305 decrypt", () => b.decryptInto(key, nonce, out, ad, back));
}

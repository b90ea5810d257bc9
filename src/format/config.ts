import { FormatError } from "./codec.js";
import { hexField, int, intIn, obj, oneOf, str, type Json } from "./fields.js";
import { toHex } from "../util/bytes.js";

/** Repository-wide settings fixed at init; signed by the genesis root key. */
export interface RepoConfig {
  readonly repoId: string;
  readonly formatVersion: 1;
  readonly createdAt: string;
  readonly rootPublicKey: Uint8Array;
  /** Fixed chunk size for disk images, bytes. */
  readonly imageChunkSize: number;
  /** FastCDC limits for files, bytes. */
  readonly fileChunkMin: number;
  readonly fileChunkAvg: number;
  readonly fileChunkMax: number;
  /** Target pack size, bytes. */
  readonly packSize: number;
  /** How writers compress chunks (readers decode each blob by its codec byte, whatever this says). */
  readonly compression: "lz4" | "zstd";
  /** zstd's level writers use (negative: zstd's fast modes); always 1 for LZ4, which has one mode. */
  readonly compressionLevel: number;
}

export const REPO_ID_PATTERN = /^[0-9a-f]{32}$/;

/** zstd levels a repository may name: negative levels are zstd's fast modes. Readers need no level. */
export const COMPRESSION_LEVEL_MIN = -100;
export const COMPRESSION_LEVEL_MAX = 19;
/** The zstd level of `init --compression zstd` without a level. */
export const ZSTD_DEFAULT_LEVEL = -1;
/** The level an LZ4 repository records: LZ4's one (default) mode. */
export const LZ4_LEVEL = 1;

/** Fixed image chunk sizes a repository may name: powers of two from 4 KiB to 16 MiB. */
export const IMAGE_CHUNK_MIN = 4096;
export const IMAGE_CHUNK_MAX = 1 << 24;

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function isValidImageChunkSize(bytes: number): boolean {
  return isPowerOfTwo(bytes) && bytes >= IMAGE_CHUNK_MIN && bytes <= IMAGE_CHUNK_MAX;
}

export function encodeConfigMeta(c: RepoConfig): Json {
  return {
    repoId: c.repoId,
    formatVersion: c.formatVersion,
    createdAt: c.createdAt,
    rootPublicKey: toHex(c.rootPublicKey),
    imageChunkSize: c.imageChunkSize,
    fileChunkMin: c.fileChunkMin,
    fileChunkAvg: c.fileChunkAvg,
    fileChunkMax: c.fileChunkMax,
    packSize: c.packSize,
    compression: c.compression,
    compressionLevel: c.compressionLevel,
  };
}

export function parseConfigMeta(value: unknown): RepoConfig {
  const o = obj(value, "config");
  const repoId = str(o, "repoId");
  if (!REPO_ID_PATTERN.test(repoId)) throw new FormatError("bad repository id");
  if (int(o, "formatVersion") !== 1) throw new FormatError("unsupported repository format version");
  const c: RepoConfig = {
    repoId,
    formatVersion: 1,
    createdAt: str(o, "createdAt"),
    rootPublicKey: hexField(o, "rootPublicKey", 32),
    imageChunkSize: int(o, "imageChunkSize"),
    fileChunkMin: int(o, "fileChunkMin"),
    fileChunkAvg: int(o, "fileChunkAvg"),
    fileChunkMax: int(o, "fileChunkMax"),
    packSize: int(o, "packSize"),
    compression: oneOf(o, "compression", ["lz4", "zstd"] as const),
    compressionLevel: intIn(o, "compressionLevel", COMPRESSION_LEVEL_MIN, COMPRESSION_LEVEL_MAX),
  };
  if (c.compression === "lz4" && c.compressionLevel !== LZ4_LEVEL) throw new FormatError("LZ4 has no compression levels");
  if (!isValidImageChunkSize(c.imageChunkSize)) throw new FormatError("bad image chunk size");
  if (!(c.fileChunkMin > 0 && c.fileChunkMin <= c.fileChunkAvg && c.fileChunkAvg <= c.fileChunkMax && c.fileChunkMax <= 1 << 26)) {
    throw new FormatError("bad file chunker limits");
  }
  if (!isPowerOfTwo(c.fileChunkAvg)) throw new FormatError("file chunk average must be a power of two");
  if (c.packSize < 1 << 16 || c.packSize > 1 << 30) throw new FormatError("bad pack size");
  return c;
}

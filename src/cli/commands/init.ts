import os from "node:os";
import type { Command } from "commander";
import { UsageError } from "../../errors.js";
import type { CompressionName } from "../../compress/compressor.js";
import { KDF_FLOOR, KDF_MAX } from "../../crypto/kdf.js";
import { COMPRESSION_LEVEL_MAX, COMPRESSION_LEVEL_MIN, ZSTD_DEFAULT_LEVEL, IMAGE_CHUNK_MAX, IMAGE_CHUNK_MIN, isValidImageChunkSize } from "../../format/config.js";
import { DEFAULT_CONFIG } from "../../repository/open.js";
import { openStore } from "../../storage/open.js";
import { Vault } from "../../vault.js";
import { CliContext } from "../context.js";
import { requireRepo, requireUser, storeAccess } from "../settings.js";

function isCompressionName(name: string): name is CompressionName {
  return name === "lz4" || name === "zstd";
}

export function registerInit(program: Command): void {
  program
    .command("init")
    .description("create a repository with its first user, an admin")
    .option("--kdf-memory <MiB>", `Argon2id memory for the admin's key slot (at least ${KDF_FLOOR.memoryKiB / 1024})`)
    .option("--kdf-passes <n>", `Argon2id passes (at least ${KDF_FLOOR.passes})`)
    .option("--compression <codec>", `how backups compress chunks: lz4 (fastest) or zstd (smaller); default ${DEFAULT_CONFIG.compression}`)
    .option(
      "--compression-level <n>",
      `zstd level, ${COMPRESSION_LEVEL_MIN} to ${COMPRESSION_LEVEL_MAX}; negative levels are faster and store more (implies --compression zstd; default ${ZSTD_DEFAULT_LEVEL})`,
    )
    .option(
      "--image-chunk-size <KiB>",
      `fixed chunk size for disk images, a power of two from ${IMAGE_CHUNK_MIN / 1024} to ${IMAGE_CHUNK_MAX / 1024} KiB; smaller stores less after small rewrites, larger is faster and uses less memory (default ${DEFAULT_CONFIG.imageChunkSize / 1024})`,
    )
    .action(async (opts: { kdfMemory?: string; kdfPasses?: string; compression?: string; compressionLevel?: string; imageChunkSize?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const repo = requireRepo(ctx.settings);
      const user = requireUser(ctx.settings);
      let { kdf, allowWeak } = ctx.newSlotKdf();
      if (opts.kdfMemory !== undefined || opts.kdfPasses !== undefined) {
        const memoryMiB = opts.kdfMemory === undefined ? kdf.memoryKiB / 1024 : Number(opts.kdfMemory);
        const passes = opts.kdfPasses === undefined ? kdf.passes : Number(opts.kdfPasses);
        if (!Number.isInteger(memoryMiB) || !Number.isInteger(passes)) throw new UsageError("--kdf-memory and --kdf-passes take whole numbers");
        const argon2MaxMiB = Math.floor(KDF_MAX.memoryKiB / 1024);
        if (memoryMiB > argon2MaxMiB) throw new UsageError(`--kdf-memory ${opts.kdfMemory}: at most ${argon2MaxMiB} MiB (Argon2id's limit)`);
        const machineMiB = Math.floor(os.totalmem() / 2 ** 20);
        if (memoryMiB > machineMiB) {
          throw new UsageError(`--kdf-memory ${opts.kdfMemory}: more than this machine's ${machineMiB} MiB of memory`, "every unlock needs that much memory; give less");
        }
        if (passes > KDF_MAX.passes) throw new UsageError(`--kdf-passes ${opts.kdfPasses}: at most ${KDF_MAX.passes} (Argon2id's limit)`);
        kdf = { memoryKiB: memoryMiB * 1024, passes, parallelism: kdf.parallelism };
        allowWeak = allowWeak && process.env["VMVAULT_INSECURE_TEST_KDF"] === "1";
        // In the options' own units (the library's floor speaks KiB).
        const floorMiB = KDF_FLOOR.memoryKiB / 1024;
        if (!allowWeak && memoryMiB < floorMiB) throw new UsageError(`--kdf-memory ${opts.kdfMemory}: at least ${floorMiB} MiB (the floor that keeps guessing passphrases costly)`);
        if (!allowWeak && passes < KDF_FLOOR.passes) throw new UsageError(`--kdf-passes ${opts.kdfPasses}: at least ${KDF_FLOOR.passes} (the floor that keeps guessing passphrases costly)`);
      }
      const level = opts.compressionLevel === undefined ? undefined : Number(opts.compressionLevel);
      if (level !== undefined && (!Number.isInteger(level) || level < COMPRESSION_LEVEL_MIN || level > COMPRESSION_LEVEL_MAX)) {
        throw new UsageError(`--compression-level ${opts.compressionLevel}: give a whole number from ${COMPRESSION_LEVEL_MIN} to ${COMPRESSION_LEVEL_MAX}`);
      }
      const compression = opts.compression;
      if (compression !== undefined && !isCompressionName(compression)) throw new UsageError(`--compression ${compression}: give lz4 or zstd`);
      if (compression === "lz4" && level !== undefined) throw new UsageError("--compression-level is for zstd; LZ4 has no levels");
      const chunkKiB = opts.imageChunkSize === undefined ? undefined : Number(opts.imageChunkSize);
      if (chunkKiB !== undefined && !isValidImageChunkSize(chunkKiB * 1024)) {
        throw new UsageError(`--image-chunk-size ${opts.imageChunkSize}: give a power of two from ${IMAGE_CHUNK_MIN / 1024} to ${IMAGE_CHUNK_MAX / 1024} (KiB)`);
      }
      const config = {
        ...(compression === undefined ? {} : { compression }),
        ...(level === undefined ? {} : { compressionLevel: level }),
        ...(chunkKiB === undefined ? {} : { imageChunkSize: chunkKiB * 1024 }),
      };
      const passphrase = await ctx.passphrase(true);
      ctx.warnShortPassphrase(passphrase, allowWeak);
      let vault: Vault;
      try {
        vault = await Vault.init({
          store: openStore(repo, storeAccess(ctx.settings)),
          user,
          passphrase,
          kdf,
          allowWeakKdf: allowWeak,
          stateDir: ctx.stateDir,
          config,
        });
      } finally {
        passphrase.dispose();
      }
      const info = { repo: vault.repository.store.location, repoId: vault.repository.repoId, user, role: vault.role };
      await vault.close();
      if (ctx.json) ctx.printJson(info);
      else ctx.out(`created repository ${info.repoId} at ${info.repo}; ${user} is its admin`);
    });
}

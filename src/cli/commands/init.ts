import type { Command } from "commander";
import { UsageError } from "../../errors.js";
import { KDF_FLOOR } from "../../crypto/kdf.js";
import { openStore } from "../../storage/open.js";
import { Vault } from "../../vault.js";
import { CliContext } from "../context.js";
import { requireRepo, requireUser } from "../settings.js";

export function registerInit(program: Command): void {
  program
    .command("init")
    .description("create a repository with its first user, an admin")
    .option("--kdf-memory <MiB>", `Argon2id memory for the admin's key slot (at least ${KDF_FLOOR.memoryKiB / 1024})`)
    .option("--kdf-passes <n>", `Argon2id passes (at least ${KDF_FLOOR.passes})`)
    .action(async (opts: { kdfMemory?: string; kdfPasses?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const repo = requireRepo(ctx.settings);
      const user = requireUser(ctx.settings);
      let { kdf, allowWeak } = ctx.newSlotKdf();
      if (opts.kdfMemory !== undefined || opts.kdfPasses !== undefined) {
        const memoryMiB = opts.kdfMemory === undefined ? kdf.memoryKiB / 1024 : Number(opts.kdfMemory);
        const passes = opts.kdfPasses === undefined ? kdf.passes : Number(opts.kdfPasses);
        if (!Number.isInteger(memoryMiB) || !Number.isInteger(passes)) throw new UsageError("--kdf-memory and --kdf-passes take whole numbers");
        kdf = { memoryKiB: memoryMiB * 1024, passes, parallelism: kdf.parallelism };
        allowWeak = allowWeak && process.env["VMVAULT_INSECURE_TEST_KDF"] === "1";
      }
      const passphrase = await ctx.passphrase(true);
      let vault: Vault;
      try {
        vault = await Vault.init({ store: openStore(repo), user, passphrase, kdf, allowWeakKdf: allowWeak, stateDir: ctx.stateDir });
      } finally {
        passphrase.dispose();
      }
      const info = { repo: vault.repository.store.location, repoId: vault.repository.repoId, user, role: vault.role };
      await vault.close();
      if (ctx.json) ctx.printJson(info);
      else ctx.out(`created repository ${info.repoId} at ${info.repo}; ${user} is its admin`);
    });
}

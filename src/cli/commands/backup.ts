import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { backupRunsInline } from "../../backup/size.js";
import { CliContext } from "../context.js";
import { collect } from "../options.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, plural, warnDamagedIndexes } from "../output.js";
import { fileProblem } from "../keys-file.js";
import { UsageError } from "../../errors.js";
import { Excludes, parseExcludeFile } from "../../sources/exclude.js";

/** The patterns of an --exclude-file. */
function readExcludeFile(file: string): string[] {
  try {
    return parseExcludeFile(readFileSync(file, "utf8"));
  } catch (e) {
    throw new UsageError(`cannot read exclude file ${file}: ${fileProblem(e)}`);
  }
}

export function registerBackup(program: Command, interrupts: Interrupts): void {
  program
    .command("backup")
    .description("back up disk images and folders of one VM as a new snapshot")
    .requiredOption("--vm <name>", "the VM the sources belong to")
    .option("--no-sparse", "read every byte, holes included, instead of skipping the extents the file system reports as unallocated")
    .option("--keep-cache", "leave the pages the backup's reads and the packs it writes bring into the page cache there, instead of dropping them")
    .option("--exclude <pattern>", "leave out entries of folder sources matching this pattern: a name (*.log), a path in the snapshot (etc/ssl/private) or an absolute path (/srv/vm1/tmp); repeatable", collect)
    .option("--exclude-file <file>", "read --exclude patterns from a file, one per line (# starts a comment line); repeatable", collect)
    .option("-x, --one-file-system", "do not cross into other file systems below a folder source: a mount point is kept as an empty folder")
    .option("--exclude-if-present <name>", "leave out a folder of a folder source that holds a file of this name (.nobackup); repeatable", collect)
    .argument("<source...>", "raw disk images (files or block devices) and folders")
    .action(async (sources: string[], opts: { vm: string; sparse: boolean; keepCache?: boolean; exclude?: string[]; excludeFile?: string[]; excludeIfPresent?: string[]; oneFileSystem?: boolean }, command: Command) => {
      const ctx = new CliContext(command);
      // Read before the unlock: a missing or unreadable file is a usage error that costs no Argon2id.
      const exclude = [...(opts.exclude ?? []), ...(opts.excludeFile ?? []).flatMap(readExcludeFile)];
      new Excludes(exclude, opts.excludeIfPresent);
      interrupts.note = "; the repository stays consistent: a snapshot appears only once complete, and the next backup reuses the data this one stored";
      // A small backup of image files runs inline (the library decides): no worker starts ahead for it.
      const vault = await ctx.openVault({ withWorkers: async () => !(await backupRunsInline(sources, opts.sparse)) });
      try {
        const progress = ctx.progress;
        const workers = ctx.workers;
        const r = await vault.backup({
          vm: opts.vm,
          sources,
          sparse: opts.sparse,
          keepCache: opts.keepCache === true,
          exclude,
          excludeIfPresent: opts.excludeIfPresent ?? [],
          oneFileSystem: opts.oneFileSystem === true,
          ...(progress === undefined ? {} : { progress }),
          ...(workers === undefined ? {} : { workers }),
        });
        ctx.endProgress();
        for (const s of r.skipped) ctx.warn(`warning: skipped ${s.path} (${s.reason})`);
        warnDamagedIndexes(ctx, r.damagedIndexes);
        if (ctx.json) ctx.printJson(r);
        else {
          ctx.out(`snapshot ${r.snapshotId} of VM ${r.vm} saved`);
          const read = (s: { size: number; readBytes: number }): string => (s.readBytes < s.size ? `, ${formatBytes(s.readBytes)} read, the rest unallocated` : "");
          ctx.out(`  ${r.sources.map((s) => `${s.name} (${s.kind}, ${formatBytes(s.size)}${read(s)})`).join(", ")}`);
          ctx.out(`  ${r.newChunks} new of ${plural(r.chunks, "chunk")}; ${formatBytes(r.addedBytes)} added to the repository in ${plural(r.packs, "pack")}`);
          if (r.excluded > 0) ctx.out(`  ${plural(r.excluded, "entry", "entries")} of folders left out by the excludes${opts.oneFileSystem === true ? " and --one-file-system" : ""}`);
        }
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });
}

import type { Command } from "commander";
import type { Vault } from "../../vault.js";
import { CliContext } from "../context.js";
import type { Interrupts } from "../interrupt.js";
import { formatBytes, noun, plural, table } from "../output.js";

/** Runs a rotation and prints what it did; shared by `key rotate` and `user remove --rotate`. */
export async function runRotation(ctx: CliContext, vault: Vault, o: { reencrypt: boolean; newChunkKey: boolean; signal?: AbortSignal }): Promise<unknown> {
  const progress = ctx.progress;
  const workers = ctx.workers;
  const r = await vault.rotateKeys({
    reencrypt: o.reencrypt,
    newChunkKey: o.newChunkKey,
    ...(progress === undefined ? {} : { progress }),
    ...(workers === undefined ? {} : { workers }),
    ...(o.signal === undefined ? {} : { signal: o.signal }),
  });
  ctx.endProgress();
  if (!ctx.json) {
    if ("resealed" in r) {
      const s = r.resealed;
      ctx.out(
        `key epoch ${r.epoch} is current (was ${r.previousEpoch}); re-sealed ${plural(s.sessions, "session key")}, ${plural(s.snapshots, "snapshot header")}, ` +
          `${plural(s.indexFiles, "index file")}, ${plural(s.auditBodies, "audit record")}; ${plural(r.revokedGrants, "old grant")} revoked`,
      );
      for (const d of s.damaged) ctx.warn(`warning: ${d.object}: ${d.problem} (left as it was; old grants kept)`);
      ctx.out("data written before the rotation stays encrypted under its old session keys until `vmvault key rotate --reencrypt`");
    } else {
      const thisRun = r.resumed ? ` in all (${plural(r.thisRun.packs, "pack")} and ${plural(r.thisRun.snapshots, "snapshot")} by this run)` : "";
      ctx.out(`re-encryption ${r.resumed ? "resumed and " : ""}finished: ${plural(r.packsRewritten, "pack")} and ${plural(r.snapshotsRewritten, "snapshot")} rewritten under epoch ${r.epoch}${thisRun}`);
      reportReencryptionEnd(ctx, r);
    }
  }
  return r;
}

/** What every finished re-encryption reports last (`key rotate --reencrypt`, `repair reencrypt`): what it left out, which epochs it destroyed. */
export function reportReencryptionEnd(ctx: CliContext, r: { readonly leftOut: readonly { object: string; problem: string }[]; readonly destroyedEpochs: readonly number[] }): void {
  for (const d of r.leftOut) ctx.warn(`warning: ${d.object}: ${d.problem} (not re-encrypted: nothing could read it; left as it was)`);
  if (r.destroyedEpochs.length > 0) ctx.out(`${noun(r.destroyedEpochs.length, "epoch")} ${r.destroyedEpochs.join(", ")} destroyed: no object is readable with ${noun(r.destroyedEpochs.length, "its", "their")} keys any more`);
}

export function registerKey(program: Command, interrupts: Interrupts): void {
  const key = program.command("key").description("key epochs: rotation, re-encryption and status (admin)");

  key
    .command("rotate")
    .description("open a new key epoch and re-seal every envelope to it; --reencrypt also rewrites all data")
    .option("--reencrypt", "rewrite all data under fresh keys, then destroy the old epochs (resumable)")
    .option("--new-chunk-key", "with --reencrypt: also draw a new chunk-ID key")
    .action(async (opts: { reencrypt?: boolean; newChunkKey?: boolean }, command: Command) => {
      // A re-encryption stops at a checkpoint on the first signal; a plain rotation between the
      // envelopes it re-seals (said, and recorded in the audit trail); a second signal ends either at once.
      const resume =
        opts.reencrypt === true
          ? "; run `vmvault key rotate --reencrypt` again: it resumes from its last checkpoint (until then `vmvault key status` shows its progress)"
          : "; run `vmvault key rotate` again: it opens a new epoch and re-seals every envelope to it";
      const signal = interrupts.cancellable(resume);
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      try {
        const r = await runRotation(ctx, vault, { reencrypt: opts.reencrypt === true, newChunkKey: opts.newChunkKey === true, signal });
        if (ctx.json) ctx.printJson(r);
      } finally {
        ctx.endProgress();
        await vault.close();
      }
    });

  key
    .command("status")
    .description("epochs, who holds them, what is still under old keys, re-encryption progress")
    .action(async (_opts: unknown, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      try {
        const s = await vault.keyStatus();
        if (ctx.json) {
          ctx.printJson(s);
          return;
        }
        ctx.out(
          table(
            ["EPOCH", "STATE", "CREATED", "HOLDERS", "DATA", "ENVELOPES"],
            s.epochs.map((e) => [
              String(e.id),
              e.current ? "current" : e.destroyed ? "destroyed" : "retired",
              e.createdAt,
              e.holders.join(",") || "-",
              `${plural(e.data.packs, "pack")}, ${formatBytes(e.data.bytes)}`,
              `${plural(e.objects.sessions, "session")}, ${plural(e.objects.snapshots, "snapshot")}, ${e.objects.indexFiles} index, ${e.objects.auditBodies} audit`,
            ]),
          ),
        );
        ctx.out(`data still under keys from before epoch ${s.current}: ${plural(s.oldData.packs, "pack")}, ${formatBytes(s.oldData.bytes)}`);
        const r = s.reencryption;
        // A finished plain rotation revokes every older grant; one still held outside a re-encryption is what a stopped rotation (or envelopes it could not open) left.
        const held = r === null && !s.checkpointMissing ? s.epochs.filter((e) => !e.current && !e.destroyed && e.holders.length > 0) : [];
        if (held.length > 0) {
          const ids = held.map((e) => e.id).join(", ");
          ctx.warn(`note: retired ${noun(held.length, "epoch")} ${ids} ${noun(held.length, "is", "are")} still granted to users (a key rotation stopped part way, or left envelopes it could not open as they were): \`vmvault key rotate\` seals every envelope to a new epoch and revokes the old grants`);
        }
        ctx.out(
          r === null
            ? s.checkpointMissing
              ? "a re-encryption is unfinished and its checkpoint is missing; run `vmvault repair reencrypt` to finish it"
              : "no re-encryption under way"
            : `re-encryption to epoch ${r.targetEpoch} under way (started ${r.startedAt} by ${r.startedBy}): phase ${r.phase}, ${r.donePacks.length}/${r.oldPacks.length} packs rewritten; run \`vmvault key rotate --reencrypt\` to resume`,
        );
      } finally {
        await vault.close();
      }
    });
}

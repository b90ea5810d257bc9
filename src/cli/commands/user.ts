import type { Command } from "commander";
import { isRole, ROLES, type Role } from "../../keys/roles.js";
import { InterruptedError, isVaultError, UsageError, VaultError } from "../../errors.js";
import type { Interrupts } from "../interrupt.js";
import { runRotation } from "./key.js";
import { CliContext } from "../context.js";
import { refuseBothForms } from "../options.js";
import { noun, plural, table } from "../output.js";
import { promptYesNo } from "../prompt.js";
import { authorizeAudited } from "../../audit/guard.js";
import { assertNewUserName, assertNotSelf, assertUserToRemove } from "../../users/users.js";

export function registerUser(program: Command, interrupts: Interrupts): void {
  const user = program.command("user").description("manage users and roles (admin), or change your own passphrase");

  user
    .command("add")
    .description("add a user with a role (admin only)")
    .argument("<name>", "the new user's name")
    .requiredOption("--role <role>", "admin, operator, backup, restorer or auditor")
    .option("--new-passphrase-file <file>", "the new user's passphrase (or VMVAULT_NEW_PASSPHRASE, or a prompt)")
    .action(async (name: string, opts: { role: string; newPassphraseFile?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      try {
        await authorizeAudited(vault.repository, "admin", "user add", { user: name, role: opts.role });
        if (!isRole(opts.role)) throw new UsageError(`unknown role ${JSON.stringify(opts.role)}`, `roles: ${ROLES.join(", ")}`);
        // A taken or invalid name is refused before a new passphrase is asked for.
        assertNewUserName(vault.repository, name);
        const { kdf, allowWeak } = ctx.newSlotKdf();
        const passphrase = await ctx.newPassphrase(opts.newPassphraseFile, name, allowWeak);
        try {
          const added = await vault.addUser({ name, role: opts.role, passphrase, kdf, allowWeakKdf: allowWeak });
          if (ctx.json) ctx.printJson(added);
          else ctx.out(`added ${added.name} as ${added.role} (key fingerprint ${added.fingerprint})`);
          if (added.notGranted.length > 0) {
            ctx.warn(
              `warning: you hold no grant of key epoch ${added.notGranted.join(", ")}, which other users still hold: ${added.name} cannot read data still under ${added.notGranted.length === 1 ? "it" : "them"} until \`vmvault key rotate --reencrypt\` has finished`,
            );
          }
        } finally {
          passphrase.dispose();
        }
      } finally {
        await vault.close();
      }
    });

  const remove = user
    .command("remove")
    .description("remove a user (admin only); --rotate also opens a new key epoch without them")
    .argument("<name>", "the user to remove")
    .option("--rotate", "rotate keys now, so the removed user's keys open nothing written from now on")
    .option("--no-rotate", "remove without rotating keys")
    .action(async (name: string, opts: { rotate?: boolean }, command: Command) => {
      const ctx = new CliContext(command, interrupts);
      const vault = await ctx.openVault();
      try {
        await authorizeAudited(vault.repository, "admin", "user remove", { user: name });
        assertNotSelf(vault.repository, name);
        // A name no user has is refused (and recorded so) before any question about rotating.
        await assertUserToRemove(vault.repository, name);
        let rotate = opts.rotate;
        if (rotate === undefined) {
          rotate = await promptYesNo(
            `Rotate keys after removing ${name}, so their copied keys open nothing written from now on? [y/N] `,
            "pass --rotate or --no-rotate",
          );
        }
        // Refused before the removal, so nothing is written when the rotation could not follow.
        if (rotate) {
          await vault.assertCanRotate(
            `finish it first with \`vmvault key rotate --reencrypt\`, then run this again; or remove ${name} now with --no-rotate and, once the re-encryption has finished, run \`vmvault key rotate\` (and \`--reencrypt\`)`,
          );
        }
        const removed = await vault.removeUser(name);
        const exposure = exposureAfterRemoval(name, removed.role, rotate);
        if (!ctx.json) ctx.out(`removed ${name} (${removed.role}); ${plural(removed.snapshots.length, "snapshot")} they signed ${noun(removed.snapshots.length, "stays", "stay")} valid`);
        let rotation: unknown = null;
        if (rotate) {
          const left = `; ${name} is removed, but the key rotation did not finish: run \`vmvault key rotate\``;
          // From here a first signal stops the rotation between envelopes (recorded, said below);
          // a second one ends the process at once, with this line.
          const signal = interrupts.cancellable(left);
          try {
            rotation = await runRotation(ctx, vault, { reencrypt: false, newChunkKey: false, signal });
          } catch (e) {
            if (e instanceof InterruptedError) throw new InterruptedError(`${name} is removed, but ${e.message}${e.message.includes("vmvault key rotate") ? "" : "; run `vmvault key rotate` to finish"}`, e.signal);
            if (!isVaultError(e)) throw e;
            // The removal stands: running this command again finds no such user. Say so, and what is left to do.
            throw new VaultError(e.code, `${name} is removed, but the key rotation did not run: ${e.message}`, {
              hint: `run \`vmvault key rotate\` to finish (\`--lock-wait SECONDS\` waits for a running command); until then ${exposureAfterRemoval(name, removed.role, false)}`,
              cause: e,
            });
          }
        }
        if (ctx.json) ctx.printJson({ ...removed, rotated: rotate, rotation, exposure });
        else ctx.warn(`note: ${exposure}`);
      } finally {
        await vault.close();
      }
    });
  refuseBothForms(remove, "rotate");

  user
    .command("list")
    .description("list users, roles and key fingerprints (admin only)")
    .action(async (_opts: unknown, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      try {
        const users = await vault.listUsers();
        if (ctx.json) ctx.printJson(users);
        else ctx.out(table(["NAME", "ROLE", "FINGERPRINT", "ADDED BY", "ADDED AT"], users.map((u) => [u.name, u.role, u.fingerprint, u.addedBy, u.addedAt])));
      } finally {
        await vault.close();
      }
    });

  user
    .command("passwd")
    .description("change your own passphrase (rewrites your key slot only)")
    .option("--new-passphrase-file <file>", "the new passphrase (or VMVAULT_NEW_PASSPHRASE, or a prompt)")
    .action(async (opts: { newPassphraseFile?: string }, command: Command) => {
      const ctx = new CliContext(command);
      const vault = await ctx.openVault();
      try {
        const { kdf, allowWeak } = ctx.newSlotKdf();
        const passphrase = await ctx.newPassphrase(opts.newPassphraseFile, vault.user, allowWeak);
        try {
          await vault.changePassphrase(passphrase, kdf, allowWeak);
        } finally {
          passphrase.dispose();
        }
        if (ctx.json) ctx.printJson({ user: vault.user, changed: true });
        else ctx.out(`passphrase of ${vault.user} changed`);
      } finally {
        await vault.close();
      }
    });
}

/** What a removed user's copied keys can still do, said plainly. */
function exposureAfterRemoval(name: string, role: Role, rotated: boolean): string {
  const couldRead = role === "admin" || role === "operator" || role === "restorer";
  // A rotation replaces the root key; what a copy of the old one can still do (SECURITY.md, known limits).
  const root =
    role !== "admin"
      ? ""
      : rotated
        ? `; the rotation replaced the repository root key they held, so a copy of it signs no later registry version or grant that readers accept (with write access to the storage it could still replace this rotation's own registry version, which every machine that has seen it detects): keep the storage out of ${name}'s reach`
        : `; as an admin they held the repository root key: with write access to the storage a copy of it signs registry versions (adds users, opens key epochs) until the keys are rotated (\`vmvault key rotate\`)`;
  if (rotated) {
    return (
      (couldRead
        ? `${name}'s copied keys open nothing written from now on; data stored before the rotation stays readable with them until \`vmvault key rotate --reencrypt\``
        : `${name}'s copied keys open nothing written from now on`) + root
    );
  }
  return (
    (couldRead
      ? `${name} can no longer unlock the repository, but keys they may have copied still decrypt every snapshot stored so far and everything written until the keys are rotated (\`vmvault key rotate\`, then \`--reencrypt\` for old data)`
      : role === "auditor"
        ? `${name} can no longer unlock the repository; copied keys still read snapshot headers (VM names, times, sizes) and audit records until the keys are rotated (\`vmvault key rotate\`)`
        : `${name} can no longer unlock the repository; copied keys let them compute chunk IDs (test whether known data is stored) until the keys are rotated (\`vmvault key rotate\`)`) + root
  );
}

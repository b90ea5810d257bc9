import type { Damage } from "../errors.js";
import type { Vault } from "../vault.js";
import type { CliContext } from "./context.js";
import { BufferedOut, JsonArrayWriter, shownText, warnDamagedIndexes } from "./output.js";

/**
 * Runs a command that writes items as they come (`ls`, `diff`: a folder of millions of files is
 * never held): a line each for people, or with --json one array, closed even when the command
 * fails part way so stdout stays JSON, and not begun when it fails before its first item (as
 * every command's error leaves stdout empty). `after` may add lines for people once all are out.
 */
export async function streamItems<T, R extends { readonly damagedIndexes: readonly Damage[] }>(
  ctx: CliContext,
  vault: Vault,
  run: (emit: (item: T) => void) => Promise<R>,
  line: (item: T) => string,
  after?: (result: R) => string,
): Promise<void> {
  const out = new BufferedOut();
  const json = ctx.json ? new JsonArrayWriter(out) : undefined;
  try {
    const r = await run((item) => (json !== undefined ? json.add(item) : out.write(`${shownText(line(item))}\n`)));
    json?.close(true);
    if (json === undefined && after !== undefined) out.write(`${shownText(after(r))}\n`);
    out.flush();
    warnDamagedIndexes(ctx, r.damagedIndexes);
  } finally {
    json?.close(false);
    out.flush();
    await vault.close();
  }
}

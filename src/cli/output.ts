import type { Damage } from "../errors.js";
import type { ProgressEvent, ProgressSink } from "../util/progress.js";

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

export { noun, plural } from "../util/text.js";

/** Left-aligned text table. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** Renders progress on one stderr line that rewrites itself. */
export function progressRenderer(stream: NodeJS.WriteStream, now: () => number = Date.now): { sink: ProgressSink; done: () => void } {
  const start = now();
  let shown = false;
  const sink = (e: ProgressEvent): void => {
    const seconds = Math.max(0.001, (now() - start) / 1000);
    let text: string;
    if (e.unit === "bytes") {
      const pct = e.total !== undefined && e.total > 0 ? ` ${((100 * e.done) / e.total).toFixed(0)}%` : "";
      const of = e.total !== undefined ? ` of ${formatBytes(e.total)}` : "";
      text = `${e.phase}:${pct} ${formatBytes(e.done)}${of}, ${formatBytes(e.done / seconds)}/s`;
    } else {
      text = e.item !== undefined && e.total === undefined ? `${e.phase}: ${e.item}` : `${e.phase}: ${e.done}${e.total !== undefined ? `/${e.total}` : ""}`;
    }
    const width = stream.columns ?? 100;
    stream.write(`\r${text.slice(0, width - 1).padEnd(Math.min(width - 1, 79))}`);
    shown = true;
  };
  return {
    sink,
    done: () => {
      if (shown) stream.write("\r\x1b[K");
      shown = false;
    },
  };
}

/** One warning per index file a backup or restore left out because it could not be read. */
export function warnDamagedIndexes(ctx: { warn(text: string): void }, damaged: readonly Damage[]): void {
  for (const d of damaged) ctx.warn(`warning: skipped ${d.object}: ${d.problem}; \`vmvault repair index\` indexes its packs again`);
}

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

/**
 * Characters a terminal may act on instead of showing: C0 controls, DEL, C1 controls (U+0080 to
 * U+009F, 8-bit escape sequences to some terminals), the Unicode bidirectional controls (which
 * reorder what is shown), and lone surrogates.
 */
const ACTIVE = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|\p{Cs}/gu;
const ACTIVE_BUT_LINES = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|\p{Cs}/gu;

function escapeActive(c: string): string {
  const code = c.charCodeAt(0);
  return code < 0x80 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
}

/**
 * Text for a terminal: host names, VM and disk names, audit reasons and everything else that
 * comes from the repository or from another user may hold escape sequences or line breaks, so
 * every active character is shown as \xNN (below U+0080) or \u{N}. With `lines`, line breaks
 * and tabs stay (a whole message of our own with values inside); without, they are escaped too
 * (one value, one table cell: a value cannot forge a line of its own). Printable text, accents
 * and other scripts included, is unchanged.
 */
export function shownText(text: string, o: { lines?: boolean } = {}): string {
  return text.replace(o.lines === true ? ACTIVE_BUT_LINES : ACTIVE, escapeActive);
}

/**
 * JSON for stdout (and, one line, for --json's error on stderr): JSON.stringify already escapes C0 controls and lone surrogates; DEL, the C1
 * and the bidirectional controls are escaped too (\uXXXX, the same value to any JSON reader).
 */
/** A warning line ("warning: …") as {"warning":{"message":…}}, any other line for people (a lock wait, say) as {"notice":{"message":…}}. */
export function warningJson(text: string): string {
  const warning = /^warning: /.exec(text);
  return terminalJson(warning === null ? { notice: { message: text.replace(/^vmvault: /, "") } } : { warning: { message: text.slice(warning[0].length) } }, 0);
}

export function terminalJson(value: unknown, indent = 2): string {
  return JSON.stringify(value, null, indent).replace(/[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** Left-aligned text table; every cell is shown with shownText (one line each). */
export function table(headers: readonly string[], cells: readonly (readonly string[])[]): string {
  const rows = cells.map((r) => r.map((c) => shownText(c)));
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
      text = `${e.phase}:${pct} ${formatBytes(e.done)}${of}, ${formatBytes(e.done / seconds)}/s${eta(e, seconds)}`;
    } else {
      text = e.item !== undefined && e.total === undefined ? `${e.phase}: ${e.item}` : `${e.phase}: ${e.done}${e.total !== undefined ? `/${e.total}` : ""}`;
    }
    text = shownText(text);
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

/**
 * ", ETA 1:05": the time left at the rate so far, once a second has passed and while some of a
 * known total is left (a sparse image's holes count as done, so the rate of its data is lower).
 */
function eta(e: ProgressEvent, seconds: number): string {
  if (e.total === undefined || e.done <= 0 || e.done >= e.total || seconds < 1) return "";
  const left = Math.ceil(((e.total - e.done) * seconds) / e.done);
  const h = Math.floor(left / 3600);
  const m = Math.floor((left % 3600) / 60);
  const sec = String(left % 60).padStart(2, "0");
  return `, ETA ${h > 0 ? `${h}:${String(m).padStart(2, "0")}` : m}:${sec}`;
}

/** One warning per index file a backup or restore left out because it could not be read. */
export function warnDamagedIndexes(ctx: { warn(text: string): void }, damaged: readonly Damage[]): void {
  for (const d of damaged) ctx.warn(`warning: skipped ${d.object}: ${d.problem}; \`vmvault repair index\` indexes its packs again`);
}

/** stdout in pieces of up to 64 KiB: one write per line would make a listing of 200,000 files 200,000 system calls. */
export class BufferedOut {
  #parts: string[] = [];
  #length = 0;

  write(text: string): void {
    this.#parts.push(text);
    this.#length += text.length;
    if (this.#length >= 65536) this.flush();
  }

  flush(): void {
    if (this.#length === 0) return;
    process.stdout.write(this.#parts.join(""));
    this.#parts = [];
    this.#length = 0;
  }
}

/** A JSON array written one element at a time. */
export class JsonArrayWriter {
  readonly #out: BufferedOut;
  #count = 0;
  #closed = false;

  constructor(out: BufferedOut) {
    this.#out = out;
  }

  add(value: unknown): void {
    this.#out.write(`${this.#count === 0 ? "[\n" : ",\n"}${terminalJson(value, 0)}`);
    this.#count++;
  }

  /** Ends the array; with nothing written, writes "[]" only when the listing succeeded. */
  close(succeeded: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#count > 0) this.#out.write("\n]\n");
    else if (succeeded) this.#out.write("[]\n");
  }
}

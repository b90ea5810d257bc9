/** Progress of long work; the CLI renders it on stderr, the library only reports. */
export interface ProgressEvent {
  readonly phase: string;
  readonly done: number;
  readonly total?: number;
  readonly unit: "bytes" | "items";
  readonly item?: string;
}

export type ProgressSink = (event: ProgressEvent) => void;

/** Calls sink at most every intervalMs, and always for the final event. */
export function throttled(sink: ProgressSink | undefined, intervalMs = 200, now: () => number = Date.now): ProgressSink {
  if (sink === undefined) return () => undefined;
  let last = 0;
  return (event) => {
    const t = now();
    const final = event.total !== undefined && event.done >= event.total;
    if (final || t - last >= intervalMs) {
      last = t;
      sink(event);
    }
  };
}

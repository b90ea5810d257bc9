/** How many calls mapOrdered runs at once, and optionally how much of a weight they may carry together. */
export interface OrderedLimits<T> {
  /** Calls running at once (at least one). */
  readonly limit: number;
  /** The most weight among the running calls; a call heavier than this alone still runs, by itself. */
  readonly budget?: number;
  /** An item's weight, e.g. the bytes its call reads. */
  readonly weight?: (item: T) => number;
}

/**
 * Runs fn on several items at once and yields the results in the items' order: at most `limit`
 * calls run (a number gives only that), and with a budget, the next call starts only while the
 * running ones weigh less than it allows (the result being consumed is not counted). A
 * rejection is thrown when its turn comes, after the results before it, as a loop calling fn
 * item by item would throw it; calls already started then run to their end, their outcomes
 * ignored. For reads of many small objects, whose time is the store's latency, not their work.
 */
export async function* mapOrdered<T, R>(items: Iterable<T>, limits: number | OrderedLimits<T>, fn: (item: T) => Promise<R>): AsyncGenerator<R> {
  const o: OrderedLimits<T> = typeof limits === "number" ? { limit: limits } : limits;
  const limit = Math.max(1, o.limit);
  const budget = o.budget ?? Infinity;
  const running: { result: Promise<R>; weight: number }[] = [];
  let weighing = 0;
  const iterator = items[Symbol.iterator]();
  let next = iterator.next();
  const start = (): boolean => {
    if (next.done === true || running.length >= limit) return false;
    const weight = Math.max(0, o.weight?.(next.value) ?? 0);
    if (running.length > 0 && weighing + weight > budget) return false;
    const result = fn(next.value);
    // Handled here so that a call still running when the caller stops never goes unhandled.
    result.catch(() => undefined);
    running.push({ result, weight });
    weighing += weight;
    next = iterator.next();
    return true;
  };
  while (start());
  for (let call = running.shift(); call !== undefined; call = running.shift()) {
    const result = await call.result;
    weighing -= call.weight;
    while (start());
    yield result;
  }
}

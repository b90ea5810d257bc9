/**
 * Runs fn on up to `limit` items at once and yields the results in the items' order. A
 * rejection is thrown when its turn comes, after the results before it, as a loop calling fn
 * item by item would throw it; calls already started then run to their end, their outcomes
 * ignored. For reads of many small objects, whose time is the store's latency, not their work.
 */
export async function* mapOrdered<T, R>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<R>): AsyncGenerator<R> {
  const running: Promise<R>[] = [];
  const iterator = items[Symbol.iterator]();
  const start = (): boolean => {
    const next = iterator.next();
    if (next.done === true) return false;
    const p = fn(next.value);
    // Handled here so that a call still running when the caller stops never goes unhandled.
    p.catch(() => undefined);
    running.push(p);
    return true;
  };
  while (running.length < Math.max(1, limit) && start());
  for (let p = running.shift(); p !== undefined; p = running.shift()) {
    const result = await p;
    start();
    yield result;
  }
}

/** The word for a count: `noun(1, "pass", "passes")` is "pass", `noun(3, "pass", "passes")` "passes". */
export function noun(n: number, word: string, many = `${word}s`): string {
  return n === 1 ? word : many;
}

/** A count and its word: "1 pack", "3 packs", "1 pass", "0 passes". */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${noun(n, word, many)}`;
}

/** Orders strings by their UTF-16 code units (Array.prototype.sort's default), the same on every host, unlike localeCompare. */
export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

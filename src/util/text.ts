/** The word for a count: `noun(1, "pass", "passes")` is "pass", `noun(3, "pass", "passes")` "passes". */
export function noun(n: number, word: string, many = `${word}s`): string {
  return n === 1 ? word : many;
}

/** A count and its word: "1 pack", "3 packs", "1 pass", "0 passes". */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${noun(n, word, many)}`;
}

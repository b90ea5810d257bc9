import type { Command } from "commander";

/**
 * Makes giving both `--name` and `--no-name` a usage error (exit 2) instead of letting the last
 * one win. Commander's Option.conflicts() cannot see this pair: both set the same value.
 */
export function refuseBothForms(command: Command, name: string): Command {
  const seen = new Set<string>();
  for (const flag of [name, `no-${name}`]) command.on(`option:${flag}`, () => seen.add(flag));
  return command.hook("preAction", () => {
    if (seen.size === 2) command.error(`error: option '--${name}' cannot be used with option '--no-${name}'`, { exitCode: 2, code: "vmvault.conflictingOption" });
  });
}

/** A repeatable option's parser: every value given, in order. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

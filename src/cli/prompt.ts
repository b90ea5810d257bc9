import { Secret } from "../crypto/secret.js";
import { InterruptedError, UsageError } from "../errors.js";

/** Reads a line from the terminal without echo. Refuses (usage error) when there is no terminal. */
export async function promptSecret(question: string, hint: string): Promise<Secret> {
  const stdin = process.stdin;
  if (!stdin.isTTY || typeof stdin.setRawMode !== "function") {
    throw new UsageError("no passphrase given and no terminal to ask on", hint);
  }
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  const bytes: number[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer): void => {
        for (const b of chunk) {
          if (b === 3) {
            stdin.off("data", onData);
            // Ctrl-C in raw mode is a byte, not a signal: ended as SIGINT would end it (exit 130).
            reject(new InterruptedError("interrupted (SIGINT) at the passphrase prompt; it changed nothing", "SIGINT"));
            return;
          }
          if (b === 13 || b === 10) {
            stdin.off("data", onData);
            resolve();
            return;
          }
          if (b === 127 || b === 8) bytes.pop();
          else bytes.push(b);
        }
      };
      stdin.on("data", onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
    process.stderr.write("\n");
  }
  const secret = new Secret(Uint8Array.from(bytes));
  bytes.fill(0);
  return secret;
}

/** Asks twice and insists the answers match. */
export async function promptNewSecret(question: string, hint: string): Promise<Secret> {
  const first = await promptSecret(question, hint);
  const second = await promptSecret("Repeat to confirm: ", hint);
  const same = first.length === second.length && first.bytes.every((b, i) => b === second.bytes[i]);
  second.dispose();
  if (!same) {
    first.dispose();
    throw new UsageError("the passphrases do not match");
  }
  return first;
}

/** Asks a yes/no question on the terminal; without a terminal the caller must not ask (usage error). */
export async function promptYesNo(question: string, hint: string): Promise<boolean> {
  const stdin = process.stdin;
  if (!stdin.isTTY) throw new UsageError(`${question.trim()} needs an answer and there is no terminal`, hint);
  process.stderr.write(question);
  const answer = await new Promise<string>((resolve) => {
    stdin.resume();
    stdin.once("data", (d: Buffer) => {
      stdin.pause();
      resolve(d.toString("utf8").trim().toLowerCase());
    });
  });
  return answer === "y" || answer === "yes";
}

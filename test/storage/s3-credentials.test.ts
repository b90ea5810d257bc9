import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { StorageError } from "../../src/errors.js";
import { refreshingCredentials, runCredentialProcess, type S3Credentials } from "../../src/storage/s3-credentials.js";
import { tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const MIN = 60_000;

/** A clock the test moves, and a fetch that counts its calls and gives keys expiring `lifetime` ms after the call (never, without one). */
function fixture(lifetime: number | undefined): { clock: { t: number }; calls: () => number; fail: (e: Error | undefined) => void; creds: () => Promise<S3Credentials> } {
  const clock = { t: 1_000_000 };
  let n = 0;
  let failing: Error | undefined;
  const fetch = async (): Promise<S3Credentials> => {
    n += 1;
    await Promise.resolve();
    if (failing !== undefined) throw failing;
    return { accessKeyId: `AKID${n}`, secretAccessKey: `s${n}`, ...(lifetime === undefined ? {} : { expiration: new Date(clock.t + lifetime) }) };
  };
  return { clock, calls: () => n, fail: (e) => void (failing = e), creds: refreshingCredentials(fetch, () => clock.t) };
}

describe("temporary S3 keys, refreshed before they expire", () => {
  it("fetches once for any number of requests, concurrent ones included, until five minutes before the expiry", async () => {
    const f = fixture(60 * MIN);
    const first = await Promise.all([f.creds(), f.creds(), f.creds()]);
    expect(f.calls()).toBe(1);
    expect(first.map((c) => c.accessKeyId)).toEqual(["AKID1", "AKID1", "AKID1"]);
    f.clock.t += 54 * MIN;
    expect((await f.creds()).accessKeyId).toBe("AKID1");
    expect(f.calls()).toBe(1);
    f.clock.t += 1 * MIN + 1;
    const [a, b] = await Promise.all([f.creds(), f.creds()]);
    expect([a.accessKeyId, b.accessKeyId]).toEqual(["AKID2", "AKID2"]);
    expect(f.calls()).toBe(2);
  });

  it("refreshes short-lived keys at half their lifetime; keeps keys without an expiry for good", async () => {
    const short = fixture(2 * MIN);
    await short.creds();
    short.clock.t += MIN - 1;
    await short.creds();
    expect(short.calls()).toBe(1);
    short.clock.t += 1;
    expect((await short.creds()).accessKeyId).toBe("AKID2");
    const forever = fixture(undefined);
    await forever.creds();
    forever.clock.t += 1e12;
    expect((await forever.creds()).accessKeyId).toBe("AKID1");
    expect(forever.calls()).toBe(1);
  });

  it("keeps working keys when a refresh fails, tries again 30 s later, and fails requests once the keys have expired", async () => {
    const f = fixture(60 * MIN);
    await f.creds();
    f.fail(new StorageError("the credential_process of AWS profile p exited with status 1"));
    f.clock.t += 56 * MIN;
    expect((await f.creds()).accessKeyId).toBe("AKID1");
    expect(f.calls()).toBe(2);
    f.clock.t += 20_000;
    expect((await f.creds()).accessKeyId).toBe("AKID1");
    expect(f.calls()).toBe(2);
    f.clock.t += 10_001;
    await f.creds();
    expect(f.calls()).toBe(3);
    f.clock.t += 4 * MIN;
    await expect(f.creds()).rejects.toThrow("exited with status 1");
    f.fail(undefined);
    expect((await f.creds()).accessKeyId).toBe("AKID5");
  });
});

describe("credential_process", () => {
  /** A script that prints what it is given, and the command that runs it. */
  async function script(body: string): Promise<string> {
    const file = path.join(tmp("proc"), "creds.sh");
    await fsp.writeFile(file, `#!/bin/sh\n${body}\n`, { mode: 0o700 });
    return `'${file}' --profile backup`;
  }
  const now = (): number => Date.parse("2026-12-07T10:00:00Z");

  it("reads the AWS tools' JSON document: long-term keys, and temporary ones with their token and expiry", async () => {
    const long = await runCredentialProcess(await script(`echo '{"Version": 1, "AccessKeyId": "AKIDLONG", "SecretAccessKey": "secret/long"}'`), "backup", now);
    expect(long).toEqual({ accessKeyId: "AKIDLONG", secretAccessKey: "secret/long" });
    const temporary = await runCredentialProcess(
      await script(`test "$1" = --profile || exit 9\nprintf '{"Version":1,"AccessKeyId":"ASIATEMP","SecretAccessKey":"s","SessionToken":"tok","Expiration":"2026-12-07T11:00:00Z"}'`),
      "backup",
      now,
    );
    expect(temporary).toEqual({ accessKeyId: "ASIATEMP", secretAccessKey: "s", sessionToken: "tok", expiration: new Date("2026-12-07T11:00:00Z") });
  });

  it("names what is wrong with a failing command or its document without quoting what it printed", async () => {
    const cases: [string, RegExp][] = [
      [`echo 'SECRET-ish text that is no JSON'`, /credential_process of AWS profile backup printed no JSON document \(\d+ bytes\)/],
      [`echo '["SECRET-ish"]'`, /printed JSON that is not an object/],
      [`echo '{"Version": 2, "AccessKeyId": "SECRET-ish", "SecretAccessKey": "x"}'`, /printed Version 2, not 1/],
      [`echo '{"Version": 1, "AccessKeyId": "SECRET-ish"}'`, /printed no SecretAccessKey/],
      [`echo '{"Version": 1, "AccessKeyId": "SECRET-ish", "SecretAccessKey": "x", "Expiration": "2026-12-07T09:59:59Z"}'`, /printed keys that expired at 2026-12-07T09:59:59.000Z/],
      [`echo '{"Version": 1, "AccessKeyId": "SECRET-ish", "SecretAccessKey": "x", "Expiration": "soon"}'`, /an Expiration that is not an ISO 8601 time/],
      [`echo 'SECRET-ish'; echo 'the token has expired: run login' >&2; exit 3`, /exited with status 3: the token has expired: run login$/],
      [`head -c 70000 /dev/zero | tr '\\0' S`, /printed more than 64 KiB/],
      [`kill -TERM $$`, /was ended by SIGTERM|exited with status 143/],
    ];
    for (const [body, said] of cases) {
      const e = await runCredentialProcess(await script(body), "backup", now).catch((x: unknown) => x);
      expect(e, body).toBeInstanceOf(StorageError);
      expect((e as Error).message, body).toMatch(said);
      expect((e as Error).message).not.toContain("SECRET-ish");
      expect((e as StorageError).hint).toContain("Version 1, AccessKeyId, SecretAccessKey");
    }
    await expect(runCredentialProcess("/nonexistent/helper --profile x", "backup", now)).rejects.toThrow(/exited with status 127: .*not found/);
  });

  it("stops a command that does not finish, and what it started", async () => {
    const dir = tmp("proc");
    const started = Date.now();
    const e = await runCredentialProcess(await script(`sleep 30 & echo $! > '${dir}/child'; wait`), "backup", now, 300).catch((x: unknown) => x);
    expect((e as Error).message).toBe("the credential_process of AWS profile backup did not finish in 0.3 s and was stopped");
    expect(Date.now() - started).toBeLessThan(5_000);
    const child = Number((await fsp.readFile(path.join(dir, "child"), "utf8")).trim());
    // The shell's own child went with it: the whole process group was ended.
    await expect.poll(() => alive(child), { timeout: 2_000 }).toBe(false);
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

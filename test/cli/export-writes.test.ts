/**
 * `vmvault export nbd --write-dir`: a snapshot served writable to real NBD clients (qemu-io,
 * qemu-img, nbdcopy, nbdinfo), the writes kept in the folder and never in the repository, taken
 * up again by the next export of the same snapshot, over TLS too; and the refusals (another
 * snapshot's folder, a folder in use, with --overlay-dir).
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, promises as fsp, statSync } from "node:fs";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, vault } from "../helpers/cli.js";
import { endExports, resultOf, run, startExport, type Listening } from "../helpers/nbd-export.js";
import { seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";
import { domainXml } from "../helpers/domain-xml.js";
import { mountTmpfs } from "../helpers/mounts.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

afterEach(endExports);

const haveClients = ["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"].every((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0);

interface WritesListening extends Listening {
  writes: { dir: string; disks: { disk: string; file: string; earlierBytes: number }[] };
}

interface AuditRecord {
  action: string;
  result: string;
  target: Record<string, unknown>;
}

/** A repository with one snapshot of VM web holding a.raw (4 MiB of data, 4 MiB of holes). */
async function fixture(): Promise<{ dir: string; repo: string; v: ReturnType<typeof vault>; image: string }> {
  const dir = tmp("writes");
  const { repo, v } = await initCliRepo(dir);
  const image = path.join(dir, "a.raw");
  await fsp.writeFile(image, seededBytes("writable export", 4 * MiB));
  await fsp.truncate(image, 8 * MiB);
  const backup = await v(["backup", "--vm", "web", image]);
  expect(backup.code, backup.stderr).toBe(0);
  return { dir, repo, v, image };
}

function qemuIo(uri: string, ...commands: string[]): ReturnType<typeof run> {
  return run("qemu-io", ["-f", "raw", uri, ...commands.flatMap((c) => ["-c", c])]);
}

describe.skipIf(!haveClients)("export nbd --write-dir", () => {
  beforeAll(() => {
    expect(existsSync(path.resolve(import.meta.dirname, "../../dist/vmvault.cjs"))).toBe(true);
  });

  it("takes writes into the folder, serves them back over the snapshot, goes on with them in the next export, and leaves the backup as it was", async () => {
    const { dir, repo, v, image } = await fixture();
    const writes = path.join(dir, "writes");
    const e = await startExport(repo, ["latest", "--reason", "INC-7: run web from its backup", "--listen", "127.0.0.1:0", "--write-dir", writes]);
    const listening = e.listening as WritesListening;
    const uri = listening.exports[0]?.uri ?? "";
    expect(listening.writes).toEqual({ dir: writes, disks: [{ disk: "a.raw", file: path.join(writes, "a.raw.writes"), earlierBytes: 0 }] });
    expect(statSync(writes).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(writes, "a.raw.writes")).mode & 0o777).toBe(0o600);

    const wrote = qemuIo(uri, "write -P 0xab 1M 64k", "write -P 0xcd 5M 4k", "write -z 2M 128k", "flush");
    expect(wrote.status, wrote.stderr + wrote.stdout).toBe(0);
    const readBack = qemuIo(uri, "read -P 0xab 1M 64k", "read -P 0xcd 5M 4k", "read -P 0 2M 128k");
    expect(readBack.status, readBack.stderr).toBe(0);
    expect(readBack.stdout).not.toMatch(/Pattern verification failed/);
    // What the clients see: the image with the writes over it, holes where it had none before.
    const expected = Buffer.from(await fsp.readFile(image));
    expected.fill(0xab, MiB, MiB + 64 * 1024);
    expected.fill(0xcd, 5 * MiB, 5 * MiB + 4096);
    expected.fill(0, 2 * MiB, 2 * MiB + 128 * 1024);
    const copy = path.join(dir, "copy.raw");
    expect(run("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, copy]).status).toBe(0);
    expect(Buffer.compare(await fsp.readFile(copy), expected)).toBe(0);
    const map = run("nbdinfo", ["--map", uri]).stdout;
    expect(map).toMatch(/^\s+2097152\s+131072\s+3\s+hole,zero$/m);
    // One export uses the folder at a time.
    const second = await vault(repo)(["export", "nbd", "latest", "--reason", "again", "--listen", "127.0.0.1:0", "--write-dir", writes]);
    expect(second.code, second.stderr).toBe(6);
    expect(second.stderr).toMatch(/the write folder .* is in use by the export of process \d+/);

    e.child.kill("SIGINT");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    const result = resultOf(done) as ReturnType<typeof resultOf> & { writeCount: number; written: number };
    expect(result).toMatchObject({ writeCount: 2, written: 64 * 1024 + 4096 });
    expect(done.stderr).toMatch(/reads and writes a\.raw/);

    // The backup is as it was: restored, it is the original image.
    const out = path.join(dir, "restored");
    const restore = await v(["restore", "latest", "--target", out, "--reason", "compare"]);
    expect(restore.code, restore.stderr).toBe(0);
    expect(await sha256File(path.join(out, "a.raw"))).toBe(await sha256File(image));

    // The next export of the snapshot with the folder goes on with the writes.
    const again = await startExport(repo, ["latest", "--reason", "INC-7: web again", "--listen", "127.0.0.1:0", "--write-dir", writes]);
    const earlier = (again.listening as WritesListening).writes.disks[0]?.earlierBytes ?? 0;
    // 1M and 5M written (a block each), 2M zeroed (two blocks).
    expect(earlier).toBe(4 * 64 * 1024);
    const copy2 = path.join(dir, "copy2.raw");
    expect(run("nbdcopy", [again.listening.exports[0]?.uri ?? "", copy2]).status).toBe(0);
    expect(Buffer.compare(await fsp.readFile(copy2), expected)).toBe(0);
    again.child.kill("SIGTERM");
    expect((await again.exit).code).toBe(0);

    const log = await v(["audit", "log", "--json", "--action", "export"]);
    const records = JSON.parse(log.stdout) as AuditRecord[];
    expect(records[0]?.target).toMatchObject({ writeDir: writes });
    expect(records.find((r) => r.result === "succeeded")?.target).toMatchObject({ writes: 2, written: 64 * 1024 + 4096 });
  });

  it("refuses the folder of another snapshot, and --write-dir with --overlay-dir, with nothing served", async () => {
    const { dir, repo, v, image } = await fixture();
    const writes = path.join(dir, "writes");
    const first = await startExport(repo, ["latest", "--reason", "one", "--listen", "127.0.0.1:0", "--write-dir", writes]);
    expect(qemuIo(first.listening.exports[0]?.uri ?? "", "write -P 1 0 4k", "flush").status).toBe(0);
    first.child.kill("SIGINT");
    expect((await first.exit).code).toBe(0);
    await fsp.appendFile(image, "next day");
    expect((await v(["backup", "--vm", "web", image])).code).toBe(0);
    const other = await v(["export", "nbd", "latest", "--reason", "two", "--listen", "127.0.0.1:0", "--write-dir", writes]);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(new RegExp(`a\\.raw\\.map holds writes over snapshot ${first.listening.snapshotId}, not `));
    const both = await v(["export", "nbd", "latest", "--reason", "two", "--write-dir", writes, "--overlay-dir", dir]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("give --write-dir or --overlay-dir, not both");
    const log = await v(["audit", "log", "--json", "--action", "export"]);
    // The refused export was authorized and recorded, and failed; the one refused before the unlock left nothing.
    expect((JSON.parse(log.stdout) as AuditRecord[]).map((r) => r.result)).toEqual(["started", "succeeded", "started", "failed"]);
  });

  it("answers writes into a full write folder with ENOSPC, goes on serving, and ends with exit 1 and a failed outcome", async (ctx) => {
    const { dir, repo, v } = await fixture();
    const small = path.join(dir, "small");
    await fsp.mkdir(small);
    if (!mountTmpfs(small, 1024)) {
      ctx.skip();
      return;
    }
    try {
      const e = await startExport(repo, ["latest", "--reason", "full", "--listen", "127.0.0.1:0", "--write-dir", small]);
      const uri = e.listening.exports[0]?.uri ?? "";
      const big = path.join(dir, "big.raw");
      await fsp.writeFile(big, seededBytes("too big", 8 * MiB));
      const copy = run("nbdcopy", [big, uri]);
      expect(copy.status).not.toBe(0);
      expect(copy.stderr).toMatch(/No space left on device/);
      // Reads go on; more failed writes are counted, not each told.
      expect(qemuIo(uri, "read 0 64k").status).toBe(0);
      qemuIo(uri, ...Array.from({ length: 30 }, (_, i) => `write -P 7 ${4 * MiB + i * 65536} 64k`));
      e.child.kill("SIGINT");
      const done = await e.exit;
      expect(done.code, done.stderr).toBe(1);
      expect(done.stderr.match(/a write of a\.raw/g)?.length).toBe(20);
      expect(done.stderr).toContain("further write failures are counted when the export stops, not told one by one");
      expect(Number(/(\d+) writes to the export failed/.exec(done.stderr)?.[1])).toBeGreaterThanOrEqual(30);
      expect(done.stderr).toMatch(/a write of a\.raw \(\d+ bytes at \d+\) by 127\.0\.0\.1:\d+ failed and was answered with an error: ENOSPC/);
      expect(done.stderr).toMatch(/\d+ writes? to the export failed \(answered with an error\), the first with: ENOSPC/);
      const log = await v(["audit", "log", "--json", "--action", "export"]);
      expect((JSON.parse(log.stdout) as AuditRecord[]).map((r) => r.result)).toEqual(["started", "failed"]);
    } finally {
      spawnSync("umount", [small]);
    }
  });

  it("writes a domain's definition on the export's disks into the folder at each export, and none with TLS", async () => {
    const dir = tmp("domain");
    const { repo, v } = await initCliRepo(dir);
    const image = path.join(dir, "web-vda.raw");
    await fsp.writeFile(image, seededBytes("domain disk", 2 * MiB));
    const xml = path.join(dir, "web.xml");
    await fsp.writeFile(xml, domainXml({ name: "web", disks: [{ file: image, target: "vda" }] }));
    expect((await v(["backup", "--domain-xml", xml])).code).toBe(0);
    const writes = path.join(dir, "writes");
    const e = await startExport(repo, ["latest", "--reason", "domain", "--listen", "127.0.0.1:0", "--write-dir", writes]);
    const listening = e.listening as WritesListening & { domain: { name: string; path: string; defined: boolean } };
    expect(listening.domain).toEqual({ name: "web", path: path.join(writes, "web.xml"), defined: false });
    const port = listening.address.split(":")[1];
    const written = await fsp.readFile(path.join(writes, "web.xml"), "utf8");
    expect(written).toContain(`<disk type='network' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source protocol='nbd' name='vda'><host name='127.0.0.1' port='${port}'/></source>`);
    expect(written).toContain("<uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>");
    expect(statSync(path.join(writes, "web.xml")).mode & 0o777).toBe(0o600);
    e.child.kill("SIGINT");
    expect((await e.exit).code).toBe(0);
    // With TLS the definition could not reach the export: none is written, the old one is left as it was.
    const keys = path.join(dir, "keys.psk");
    await fsp.writeFile(keys, `hv-2:${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    const t = await startExport(repo, ["latest", "--reason", "domain tls", "--listen", "127.0.0.1:0", "--write-dir", writes, "--tls-psk-file", keys]);
    expect((t.listening as { domain?: unknown }).domain).toBeUndefined();
    expect(await fsp.readFile(path.join(writes, "web.xml"), "utf8")).toBe(written);
    t.child.kill("SIGINT");
    expect((await t.exit).code).toBe(0);
  });

  it("takes writes over TLS with a pre-shared key: nbdcopy writes a whole disk, qemu-img reads it back", async () => {
    const { dir, repo } = await fixture();
    const keysDir = path.join(dir, "pki");
    await fsp.mkdir(keysDir);
    const keys = path.join(keysDir, "keys.psk");
    await fsp.writeFile(keys, `hv-2:${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    const writes = path.join(dir, "writes");
    const e = await startExport(repo, ["latest", "--reason", "TLS writes", "--listen", "127.0.0.1:0", "--tls-psk-file", keys, "--write-dir", writes]);
    const uri = e.listening.exports[0]?.uri ?? "";
    expect(uri).toMatch(/^nbds:\/\//);
    const source = path.join(dir, "new.raw");
    await fsp.writeFile(source, seededBytes("written over TLS", 8 * MiB));
    const copied = run("nbdcopy", [source, `${uri.replace("nbds://", "nbds://hv-2@")}?tls-psk-file=${keys}`]);
    expect(copied.status, copied.stderr).toBe(0);
    const port = uri.split(":")[2]?.split("/")[0] ?? "";
    const back = path.join(dir, "back.raw");
    const convert = run("qemu-img", ["convert", "--object", `tls-creds-psk,id=tls0,endpoint=client,dir=${keysDir},username=hv-2`, "--image-opts", `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=a.raw,tls-creds=tls0`, "-O", "raw", back]);
    expect(convert.status, convert.stderr).toBe(0);
    expect(await sha256File(back)).toBe(await sha256File(source));
    e.child.kill("SIGINT");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    expect((resultOf(done) as ReturnType<typeof resultOf> & { written: number }).written).toBeGreaterThan(0);
  });
});

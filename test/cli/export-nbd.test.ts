/**
 * `vmvault export nbd` end to end, read by real NBD clients (qemu-img, qemu-io, nbdinfo,
 * nbdcopy from Debian's qemu-utils and libnbd-bin): what they copy is the backed-up image byte
 * for byte, holes stay holes, a qcow2 overlay takes a VM's writes, and every refusal, failure
 * and tampered chunk ends as the design says, with the audit trail to show for it.
 */
import { spawnSync } from "node:child_process";
import { promises as fsp, statSync, existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { initCliRepo, vault, TEST_PASSPHRASE } from "../helpers/cli.js";
import { endExports, resultOf, run, startExport, type Listening } from "../helpers/nbd-export.js";
import { freePort, makeImage, seededBytes, sha256File, tempDirs } from "../helpers/fixtures.js";

const tmp = tempDirs();
const MiB = 1024 * 1024;

afterEach(endExports);

const haveClients = ["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"].every((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0);

interface AuditRecord {
  action: string;
  result: string;
  reason?: string;
  code?: number;
  target: Record<string, unknown>;
}

async function exportRecords(v: ReturnType<typeof vault>): Promise<AuditRecord[]> {
  const log = await v(["audit", "log", "--json"]);
  expect(log.code, log.stderr).toBe(0);
  return (JSON.parse(log.stdout) as AuditRecord[]).filter((r) => r.action === "export");
}

/** A repository with one snapshot of VM web of two disks (a.raw: holes, text, random bytes; b.raw: 3 MiB and a tail that is not a whole chunk), and a restorer. */
async function fixture(): Promise<{ dir: string; repo: string; v: ReturnType<typeof vault>; a: string; b: string }> {
  const dir = tmp("export");
  const { repo, v } = await initCliRepo(dir);
  const a = path.join(dir, "a.raw");
  const b = path.join(dir, "b.raw");
  await makeImage(a, { sizeMiB: 8, seed: "export a" });
  await fsp.writeFile(b, seededBytes("export b", 3 * MiB + 12_345));
  const backup = await v(["backup", "--vm", "web", a, b]);
  expect(backup.code, backup.stderr).toBe(0);
  const add = await v(["user", "add", "rita", "--role", "restorer"], { env: { VMVAULT_NEW_PASSPHRASE: "rita's passphrase" } });
  expect(add.code, add.stderr).toBe(0);
  return { dir, repo, v, a, b };
}

describe.skipIf(!haveClients)("export nbd", () => {
  beforeAll(() => {
    // The CLI tests run the built bin/vmvault (scripts/test.sh builds first).
    expect(existsSync(path.resolve(import.meta.dirname, "../../dist/vmvault.cjs"))).toBe(true);
  });

  it("serves every disk to a restorer: qemu-img and nbdcopy copy them byte for byte, holes stay holes, and the trail holds the export", async () => {
    const { dir, repo, v, a, b } = await fixture();
    const e = await startExport(repo, ["latest", "--reason", "copy for the incident", "--listen", "127.0.0.1:0"], "rita", "rita's passphrase");
    expect(e.listening.vm).toBe("web");
    expect(e.listening.exports.map((x) => [x.name, x.size])).toEqual([
      ["a.raw", 8 * MiB],
      ["b.raw", 3 * MiB + 12_345],
    ]);
    const [uriA, uriB] = e.listening.exports.map((x) => x.uri) as [string, string];
    expect(uriA).toBe(`nbd://${e.listening.address}/a.raw`);

    const list = run("nbdinfo", ["--list", `nbd://${e.listening.address}`]);
    expect(list.status, list.stderr).toBe(0);
    expect(list.stdout).toContain('export="a.raw"');
    expect(list.stdout).toContain('export="b.raw"');
    expect(list.stdout).toMatch(/read-only|is_read_only: true/);

    const outA = path.join(dir, "a.copy");
    const convert = run("qemu-img", ["convert", "-f", "raw", "-O", "raw", uriA, outA]);
    expect(convert.status, convert.stderr).toBe(0);
    expect(await sha256File(outA)).toBe(await sha256File(a));
    // qemu-img asked where the holes are and left them holes.
    expect(statSync(outA).blocks * 512).toBeLessThan(3 * MiB);

    const outB = path.join(dir, "b.copy");
    const copy = run("nbdcopy", [uriB, outB]);
    expect(copy.status, copy.stderr).toBe(0);
    expect(await sha256File(outB)).toBe(await sha256File(b));

    // The map: a.raw is a hole up to 1 MiB, where its text starts.
    const map = run("nbdinfo", ["--map", uriA]);
    expect(map.status, map.stderr).toBe(0);
    const extents = map.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/));
    expect(extents[0]?.slice(0, 3)).toEqual(["0", String(MiB), "3"]);
    expect(extents[1]?.[0]).toBe(String(MiB));
    expect(extents[1]?.[2]).toBe("0");
    const total = extents.reduce((n, x) => n + Number(x[1]), 0);
    expect(total).toBe(8 * MiB);

    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    const result = resultOf(done);
    expect(result.connections).toBeGreaterThanOrEqual(4);
    expect(result.reads).toBeGreaterThan(0);
    // Both disks whole (qemu-img read a.raw's data only; nbdcopy all of b.raw), and some.
    expect(result.bytes).toBeGreaterThanOrEqual(3 * MiB + 12_345);
    expect(done.stderr).toMatch(/"notice".*connected/);

    const records = await exportRecords(v);
    expect(records.map((r) => r.result)).toEqual(["started", "succeeded"]);
    expect(records[0]).toMatchObject({ reason: "copy for the incident", target: { snapshot: e.listening.snapshotId, vm: "web" } });
    expect(records[1]?.target).toMatchObject({ address: e.listening.address, bytes: result.bytes, reads: result.reads });
  });

  it("listens on a Unix socket only its user may open, stops after the first client with --once, and removes the socket", async () => {
    const { dir, repo, a } = await fixture();
    const socket = path.join(dir, "export.sock");
    const e = await startExport(repo, ["latest", "--disk", "a.raw", "--reason", "socket", "--socket", socket, "--once"]);
    expect(e.listening.address).toBe(socket);
    expect(e.listening.exports.map((x) => x.name)).toEqual(["a.raw"]);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    const out = path.join(dir, "a.copy");
    const copy = run("nbdcopy", [e.listening.exports[0]?.uri ?? "", out]);
    expect(copy.status, copy.stderr).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(a));
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(0);
    // nbdcopy opens a second connection beside its first (the export allows several).
    expect(resultOf(done).connections).toBeGreaterThanOrEqual(1);
    expect(existsSync(socket)).toBe(false);
    // A file where the socket goes (one a killed export left, say) is not taken over.
    await fsp.writeFile(socket, "");
    const taken = await vault(repo)(["export", "nbd", "latest", "--reason", "socket", "--socket", socket]);
    expect(taken.code, taken.stderr).toBe(2);
    expect(taken.stderr).toContain(`cannot listen on ${socket}: it exists`);
  });

  it("lets a VM write to a qcow2 overlay backed by the export, and the backup stays as it was", async () => {
    const { dir, repo, a } = await fixture();
    const overlays = path.join(dir, "overlays");
    await fsp.mkdir(overlays);
    const e = await startExport(repo, ["latest", "--disk", "a.raw", "--reason", "boot a copy", "--listen", "127.0.0.1:0", "--overlay-dir", overlays]);
    const uri = e.listening.exports[0]?.uri ?? "";
    const overlay = path.join(overlays, "a.raw.qcow2");
    expect((e.listening as Listening & { overlays: unknown }).overlays).toEqual([{ disk: "a.raw", path: overlay }]);
    expect(statSync(overlay).mode & 0o777).toBe(0o600);
    const info = JSON.parse(run("qemu-img", ["info", "--output=json", overlay]).stdout) as { "backing-filename": string; "virtual-size": number };
    expect(info).toMatchObject({ "backing-filename": uri, "virtual-size": 8 * MiB });
    // A second export into the same folder would overwrite the overlay: refused, nothing served.
    const again = await vault(repo)(["export", "nbd", "latest", "--disk", "a.raw", "--reason", "again", "--listen", "127.0.0.1:0", "--overlay-dir", overlays]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain(`${overlay} exists: it may hold what a VM wrote over an earlier export`);
    // Not "remove it" first: that would throw the VM's writes away.
    expect(again.stderr).toMatch(/next: to run that VM on it again, export the same snapshot on the same address without --overlay-dir/);
    const write = run("qemu-io", ["-c", "write -P 0xab 1M 64k", overlay]);
    expect(write.status, write.stderr + write.stdout).toBe(0);
    const readBack = run("qemu-io", ["-c", "read -P 0xab 1M 64k", "-c", "read -P 0 0 64k", overlay]);
    expect(readBack.status, readBack.stderr).toBe(0);
    expect(readBack.stdout).not.toMatch(/Pattern verification failed/);
    // What the export serves did not change: the write went to the overlay.
    const out = path.join(dir, "a.copy");
    expect(run("nbdcopy", [uri, out]).status).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(a));
    e.child.kill("SIGINT");
    expect((await e.exit).code).toBe(0);
  });

  it("is the restore capability: admin, operator and restorer may export, backup and auditor are refused before anything listens", async () => {
    const dir = tmp("roles");
    const { repo, v } = await initCliRepo(dir);
    const image = path.join(dir, "vm.raw");
    await makeImage(image, { sizeMiB: 4 });
    expect((await v(["backup", "--vm", "vm", image])).code).toBe(0);
    for (const role of ["operator", "backup", "restorer", "auditor"]) {
      const add = await v(["user", "add", role, "--role", role], { env: { VMVAULT_NEW_PASSPHRASE: `${role} passphrase` } });
      expect(add.code, add.stderr).toBe(0);
    }
    for (const role of ["admin", "operator", "restorer"]) {
      const pass = role === "admin" ? TEST_PASSPHRASE : `${role} passphrase`;
      const e = await startExport(repo, ["latest", "--reason", "roles", "--listen", "127.0.0.1:0", "--once"], role, pass);
      const size = run("nbdinfo", ["--size", e.listening.exports[0]?.uri ?? ""]);
      expect(size.stdout.trim(), `${role}: ${size.stderr}`).toBe(String(4 * MiB));
      expect((await e.exit).code, role).toBe(0);
    }
    for (const role of ["backup", "auditor"]) {
      const port = await freePort();
      const r = await vault(repo, role, `${role} passphrase`)(["export", "nbd", "latest", "--reason", "roles", "--listen", `127.0.0.1:${port}`]);
      expect(r.code, r.stderr).toBe(4);
      expect(r.stderr).toMatch(new RegExp(`access denied: ${role} may not`));
      expect(await connects(port)).toBe(false);
    }
    const records = await exportRecords(v);
    expect(records.filter((r) => r.result === "denied").length).toBe(2);
    expect(records.filter((r) => r.result === "succeeded").length).toBe(3);
  });

  it("refuses bad requests with nothing served: no reason, a remote address, a bad port, both addresses, no such disk, a wrong passphrase", async () => {
    const { repo, v } = await fixture();
    const cases: [string[], number, RegExp][] = [
      [["latest"], 2, /--reason/],
      [["latest", "--reason", "  "], 2, /needs --reason/],
      [["latest", "--reason", "r", "--listen", "0.0.0.0:0"], 2, /not a loopback address/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:70000"], 2, /port/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--socket", "/tmp/x.sock"], 2, /not both/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--disk", "c.raw"], 1, /no disk named c\.raw.*|its disks: a\.raw, b\.raw/s],
      [["nosuchsnapshot", "--reason", "r", "--listen", "127.0.0.1:0"], 2, /invalid snapshot reference/],
      [["ffffffffffff", "--reason", "r", "--listen", "127.0.0.1:0"], 1, /no snapshot/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--define"], 2, /go with --overlay-dir/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--overlay-dir", "/nonexistent-folder"], 2, /--overlay-dir \/nonexistent-folder cannot be used: it does not exist\n +next: give an existing folder the VM's QEMU can write in/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--overlay-dir", "/etc/passwd/o"], 2, /--overlay-dir \/etc\/passwd\/o lies below \/etc\/passwd, which is not a folder/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--write-dir", "/etc/passwd"], 2, /--write-dir \/etc\/passwd is not a folder\n  next: give a folder, or a path that does not exist yet/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--write-dir", "/etc/passwd/w"], 2, /--write-dir \/etc\/passwd\/w lies below \/etc\/passwd, which is not a folder/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--overlay-dir", "/tmp", "--domain-name", "clone"], 2, /keeps no domain definition/],
      [["latest", "--reason", "r", "--listen", "127.0.0.1:0", "--overlay-dir", "/tmp", "--libvirt-uri", "test:///default"], 2, /--libvirt-uri goes with --define/],
    ];
    for (const [args, code, message] of cases) {
      const r = await v(["export", "nbd", ...args]);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(message);
    }
    const wrong = await vault(repo, "admin", "not the passphrase")(["export", "nbd", "latest", "--reason", "r", "--listen", "127.0.0.1:0"]);
    expect(wrong.code).toBe(3);
    // None of them served: the trail holds no successful export.
    expect((await exportRecords(v)).filter((r) => r.result === "succeeded")).toEqual([]);
  });

  it("fails with exit 1 when the port is taken, and says so in the trail; a socket's missing folder is named", async () => {
    const { v } = await fixture();
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as net.AddressInfo).port;
    try {
      const r = await v(["export", "nbd", "latest", "--reason", "busy port", "--listen", `127.0.0.1:${port}`]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`cannot listen on 127.0.0.1:${port}: it is in use`);
      expect(r.stderr).toMatch(/next: another export or NBD server listens there; give another port with --listen HOST:PORT \(port 0 picks a free one\)/);
    } finally {
      taken.close();
    }
    const records = await exportRecords(v);
    expect(records.map((x) => x.result)).toEqual(["started", "failed"]);
    // A socket in a folder that does not exist: said so (libuv's own word for it is EACCES).
    const missing = path.join(tmp("sock"), "no-such-folder", "s");
    const r = await v(["export", "nbd", "latest", "--reason", "socket", "--socket", missing]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`cannot listen on ${missing}: the folder ${path.dirname(missing)} does not exist`);
  });

  it("answers a read of a tampered chunk with EIO, never its bytes, and ends with exit 5", async () => {
    const { dir, repo, v } = await fixture();
    // The data pack holding b.raw's random bytes: flip one byte in its middle.
    const packs: string[] = [];
    for (const sub of await fsp.readdir(path.join(repo, "data"))) for (const f of await fsp.readdir(path.join(repo, "data", sub))) packs.push(path.join(repo, "data", sub, f));
    let largest = packs[0] as string;
    for (const p of packs) if (statSync(p).size > statSync(largest).size) largest = p;
    const bytes = await fsp.readFile(largest);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] as number) ^ 0x40;
    await fsp.writeFile(largest, bytes);

    const e = await startExport(repo, ["latest", "--disk", "b.raw", "--reason", "tampered", "--listen", "127.0.0.1:0"]);
    const out = path.join(dir, "b.copy");
    const copy = run("nbdcopy", [e.listening.exports[0]?.uri ?? "", out]);
    expect(copy.status).not.toBe(0);
    expect(copy.stderr).toMatch(/Input\/output error|EIO|failed/i);
    e.child.kill("SIGTERM");
    const done = await e.exit;
    expect(done.code, done.stderr).toBe(5);
    expect(done.stderr).toMatch(/answered with EIO/);
    expect(done.stderr).toMatch(/integrity failure/);
    const records = await exportRecords(v);
    expect(records.map((x) => [x.result, x.code])).toEqual([
      ["started", undefined],
      ["failed", 5],
    ]);
  });
});

async function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, "127.0.0.1");
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

/**
 * Folder backups keep extended attributes: user attributes, POSIX ACLs (system.posix_acl_*),
 * root-only namespaces (trusted.*) and file capabilities come back on files (held whole or
 * written in pieces), folders, the folder itself and symlinks; capabilities only with the
 * recorded owner; an attribute whose name is not UTF-8 is reported and left out. Attributes are
 * set and read here by Python's os module, not by vmvault's helper.
 */
import { promises as fsp } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { initCliRepo } from "../helpers/cli.js";
import { seededBytes, tempDirs } from "../helpers/fixtures.js";
import { aclHex, CAP_NET_BIND_SERVICE_HEX, listXattrsPy, setXattrsPy } from "../helpers/xattrs.js";

const tmp = tempDirs();
const isRoot = process.getuid?.() === 0;
const hex = (s: string): string => Buffer.from(s).toString("hex");

/**
 * A folder `cfg`: small.txt (held whole by a restore) and big.img (600 KiB, written in pieces)
 * with user attributes (one binary, with NUL bytes), an access ACL on small.txt, a default ACL
 * and a user attribute on sub/, one on cfg itself, and, as root, trusted.* on the symlink link.
 */
async function tree(): Promise<{ dir: string; expected: Record<string, Record<string, string>> }> {
  const dir = path.join(tmp("src"), "cfg");
  await fsp.mkdir(path.join(dir, "sub"), { recursive: true });
  await fsp.writeFile(path.join(dir, "small.txt"), "small\n");
  await fsp.writeFile(path.join(dir, "big.img"), seededBytes("xattr big", 600 * 1024));
  await fsp.writeFile(path.join(dir, "sub", "plain"), "no attributes\n");
  await fsp.symlink("small.txt", path.join(dir, "link"));
  const expected: Record<string, Record<string, string>> = {
    "": { "user.backup.note": hex("the folder itself") },
    "small.txt": { "user.mime_type": hex("text/plain"), "user.binary": "00ff0001", "system.posix_acl_access": aclHex(1234) },
    "big.img": { "user.checksum": hex("sha256:abc"), "user.empty": "" },
    sub: { "user.dir": hex("d"), "system.posix_acl_default": aclHex(4321) },
    "sub/plain": {},
  };
  for (const [rel, attrs] of Object.entries(expected)) setXattrsPy(path.join(dir, rel), Object.entries(attrs));
  if (isRoot) {
    setXattrsPy(path.join(dir, "link"), [["trusted.link", hex("on the link itself")]], { follow: false });
    expected["link"] = { "trusted.link": hex("on the link itself") };
  }
  return { dir, expected };
}

function attrsOf(dir: string, rels: readonly string[]): Record<string, Record<string, string>> {
  return Object.fromEntries(rels.map((rel) => [rel, listXattrsPy(path.join(dir, rel), { follow: rel !== "link" })]));
}

describe("extended attributes", () => {
  it("come back on files, folders, the folder itself and symlinks, with the modes ACLs set; --include keeps them too", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const { dir, expected } = await tree();
    const mode = (await fsp.stat(path.join(dir, "small.txt"))).mode & 0o7777;
    const b = await v(["backup", "--vm", "v", dir]);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toBe("");

    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const rels = Object.keys(expected);
    const got = attrsOf(path.join(out, "cfg"), rels);
    expect(got).toEqual(expected);
    expect((await fsp.stat(path.join(out, "cfg", "small.txt"))).mode & 0o7777).toBe(mode);
    expect((await fsp.readFile(path.join(out, "cfg", "big.img"))).equals(await fsp.readFile(path.join(dir, "big.img"))), "big.img's content").toBe(true);
    const counted = Object.values(expected).reduce((n, a) => n + Object.keys(a).length, 0);
    expect(JSON.parse(r.stdout).xattrs).toEqual({ restored: counted, skipped: 0, excluded: 0, skips: [] });

    const one = tmp("one");
    const i = await v(["restore", "latest", "--target", one, "--reason", "t", "--include", "small.txt"]);
    expect(i.code, i.stderr).toBe(0);
    expect(listXattrsPy(path.join(one, "cfg", "small.txt"))).toEqual(expected["small.txt"]);
  });

  it.skipIf(!isRoot)("file capabilities come back only with the file's recorded owner: --no-owner leaves them out and says so", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const dir = path.join(tmp("src"), "bin");
    await fsp.mkdir(dir);
    for (const name of ["small", "large"]) {
      const file = path.join(dir, name);
      await fsp.writeFile(file, name === "small" ? "#!/bin/sh\n" : seededBytes("cap", 300 * 1024));
      await fsp.chown(file, 1234, 1234);
      setXattrsPy(file, [["security.capability", CAP_NET_BIND_SERVICE_HEX], ["user.kept", "01"]]);
    }
    expect(listXattrsPy(path.join(dir, "small"))["security.capability"]).toBe(CAP_NET_BIND_SERVICE_HEX);
    const b = await v(["backup", "--vm", "v", dir]);
    expect(b.code, b.stderr).toBe(0);

    const owned = tmp("owned");
    const r = await v(["restore", "latest", "--target", owned, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe("");
    for (const name of ["small", "large"]) {
      expect(listXattrsPy(path.join(owned, "bin", name))).toEqual({ "security.capability": CAP_NET_BIND_SERVICE_HEX, "user.kept": "01" });
      expect((await fsp.stat(path.join(owned, "bin", name))).uid).toBe(1234);
    }

    const plain = tmp("plain");
    const n = await v(["restore", "latest", "--target", plain, "--reason", "t", "--no-owner"]);
    expect(n.code, n.stderr).toBe(0);
    for (const name of ["small", "large"]) expect(listXattrsPy(path.join(plain, "bin", name))).toEqual({ "user.kept": "01" });
    expect(n.stderr).toContain("warning: 2 extended attributes were not restored (2 were)");
    expect(n.stderr).toContain(`${path.join(plain, "bin", "small")}: security.capability: restored only with the file's recorded owner`);

    const json = await v(["restore", "latest", "--target", tmp("json"), "--reason", "t", "--no-owner", "--json"]);
    expect(json.code, json.stderr).toBe(0);
    const x = (JSON.parse(json.stdout) as { xattrs: { restored: number; skipped: number; skips: { name: string }[] } }).xattrs;
    expect(x.restored).toBe(2);
    expect(x.skipped).toBe(2);
    expect(x.skips.map((s) => s.name)).toEqual(["security.capability", "security.capability"]);
  });

  it("restore --exclude-xattr leaves the attributes it names unset, on files, folders, symlinks and disk images, counted apart from skips", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const { dir, expected } = await tree();
    const image = path.join(tmp("img"), "web1.raw");
    await fsp.writeFile(image, seededBytes("xattr image", 64 * 1024));
    setXattrsPy(image, [["user.vm", hex("web1")], ["user.mime_type", hex("raw")]]);
    expect((await v(["backup", "--vm", "v", dir, image])).code).toBe(0);
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t", "--json", "--exclude-xattr", "user.mime_type", "--exclude-xattr", "system.posix_acl_*", "--exclude-xattr", "trusted.*"]);
    expect(r.code, r.stderr).toBe(0);
    const left = (attrs: Record<string, string>): Record<string, string> => Object.fromEntries(Object.entries(attrs).filter(([n]) => n !== "user.mime_type" && !n.startsWith("system.posix_acl_") && !n.startsWith("trusted.")));
    const want = Object.fromEntries(Object.entries(expected).map(([rel, attrs]) => [rel, left(attrs)]));
    expect(attrsOf(path.join(out, "cfg"), Object.keys(expected))).toEqual(want);
    expect(listXattrsPy(path.join(out, "web1.raw"))).toEqual({ "user.vm": hex("web1") });
    const all = Object.values(expected).reduce((n, a) => n + Object.keys(a).length, 0) + 2;
    const kept = Object.values(want).reduce((n, a) => n + Object.keys(a).length, 0) + 1;
    expect(JSON.parse(r.stdout).xattrs).toEqual({ restored: kept, skipped: 0, excluded: all - kept, skips: [] });
    // "*": none at all.
    const none = tmp("none");
    expect((await v(["restore", "latest", "--target", none, "--reason", "t", "--exclude-xattr", "*"])).code).toBe(0);
    expect(listXattrsPy(path.join(none, "cfg", "small.txt"))).toEqual({});
    expect(listXattrsPy(path.join(none, "web1.raw"))).toEqual({});
    // A pattern that cannot be read: a usage error before the passphrase is asked for.
    const bad = await v(["restore", "latest", "--target", tmp("bad"), "--reason", "t", "--exclude-xattr", "user.[a"], { env: { VMVAULT_PASSPHRASE: undefined } });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--exclude-xattr "user\.\[a": "\[" without its "\]"/);
  });

  it("an attribute whose name is not UTF-8 is left out with a warning; the rest are kept", async () => {
    const { v } = await initCliRepo(tmp("repo"));
    const dir = path.join(tmp("src"), "odd");
    await fsp.mkdir(dir);
    await fsp.writeFile(path.join(dir, "f"), "f\n");
    // \udcff: the byte 0xff, as Python's os.fsencode spells it.
    setXattrsPy(path.join(dir, "f"), [["user.caf\udcff", "01"], ["user.fine", "02"]]);
    const b = await v(["backup", "--vm", "v", dir]);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toContain("warning: skipped odd/f (extended attribute user.caf\\xff left out: its name is not UTF-8)");
    const out = tmp("out");
    const r = await v(["restore", "latest", "--target", out, "--reason", "t"]);
    expect(r.code, r.stderr).toBe(0);
    expect(listXattrsPy(path.join(out, "odd", "f"))).toEqual({ "user.fine": "02" });
  });
});

/**
 * Extended attributes set and read for tests by Python's os module (python3 is what node-gyp
 * builds with, so it is on every machine that built vmvault): independent of vmvault's own
 * native helper, which the tests check.
 */
import { execFileSync } from "node:child_process";
import { encodeEntry, type FolderEntry } from "../../src/format/entries.js";
import type { FolderRestoreResult } from "../../src/restore/folder.js";
import { concatBytes, utf8 } from "../../src/util/bytes.js";
import type { Xattr } from "../../src/util/xattrs.js";
import { seededBytes } from "./fixtures.js";
import { dirEntry, fileEntry, restoreEntryBlob, rootEntry, symlinkEntry } from "./folder-restore.js";

const SCRIPT = String.raw`
import json, os, sys
op, path, follow = sys.argv[1], os.fsencode(sys.argv[2]), sys.argv[3] == "1"
if op == "set":
    for name, value in json.loads(sys.stdin.read()):
        os.setxattr(path, os.fsencode(name), bytes.fromhex(value), follow_symlinks=follow)
else:
    names = os.listxattr(path, follow_symlinks=follow)
    print(json.dumps({os.fsdecode(n): os.getxattr(path, n, follow_symlinks=follow).hex() for n in names}))
`;

/** Sets each [name, value as hex] on path (a name may carry surrogate escapes for bytes that are not UTF-8). */
export function setXattrsPy(path: string, xattrs: readonly (readonly [string, string])[], o: { follow?: boolean } = {}): void {
  execFileSync("python3", ["-c", SCRIPT, "set", path, o.follow === false ? "0" : "1"], { input: JSON.stringify(xattrs) });
}

/** Every extended attribute of path, name to value as hex; a symlink's own unless follow. */
export function listXattrsPy(path: string, o: { follow?: boolean } = {}): Record<string, string> {
  return JSON.parse(execFileSync("python3", ["-c", SCRIPT, "list", path, o.follow === false ? "0" : "1"], { encoding: "utf8" })) as Record<string, string>;
}

/**
 * A POSIX ACL as Linux stores it in system.posix_acl_access or _default (version 2, then tag,
 * permissions and ID per entry, little-endian), as hex: owner rwx, user uid r-x, group r-x,
 * mask r-x, other ---.
 */
export function aclHex(uid: number): string {
  const entries: [number, number, number][] = [
    [0x01, 7, 0xffffffff], // ACL_USER_OBJ
    [0x02, 5, uid], // ACL_USER
    [0x04, 5, 0xffffffff], // ACL_GROUP_OBJ
    [0x10, 5, 0xffffffff], // ACL_MASK
    [0x20, 0, 0xffffffff], // ACL_OTHER
  ];
  const b = Buffer.alloc(4 + 8 * entries.length);
  b.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i);
    b.writeUInt16LE(perm, 6 + 8 * i);
    b.writeUInt32LE(id, 8 + 8 * i);
  });
  return b.toString("hex");
}

/** File capabilities (VFS_CAP_REVISION_2, effective): cap_net_bind_service, as security.capability holds them, as hex. */
export const CAP_NET_BIND_SERVICE_HEX = Buffer.from([1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).toString("hex");

export const SMALL = utf8("small\n");
export const LARGE = seededBytes("large", 300 * 1024);
const x = (name: string, value: string): Xattr => ({ name, value: utf8(value) });

/**
 * Restores to out (a path that does not exist yet) hand-written entries with extended
 * attributes a Linux target refuses: bogus.ns (no such namespace: ENOTSUP) on a folder and a
 * small file, user.on_link on a symlink (EPERM); and four it takes, on the folder itself, the
 * folder d, d/small and a 300 KiB file (written in pieces).
 */
export async function restoreRefused(out: string): Promise<{ out: string; r: FolderRestoreResult }> {
  const entries: FolderEntry[] = [
    { ...rootEntry, xattrs: [x("user.root", "r")] },
    dirEntry("d", { xattrs: [x("bogus.ns", "1"), x("user.d", "d")] }),
    fileEntry("d/small", SMALL, { xattrs: [x("bogus.ns", "1"), x("user.ok", "ok")] }),
    fileEntry("large", LARGE, { xattrs: [x("user.large", "L")] }),
    { ...symlinkEntry("link", "large"), xattrs: [x("user.on_link", "no")] },
  ];
  const r = await restoreEntryBlob(concatBytes(entries.map(encodeEntry)), out, { contents: [SMALL, LARGE] });
  return { out, r };
}

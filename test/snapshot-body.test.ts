/**
 * A snapshot body's disk source may record the image file's own metadata (`file`: mode, time,
 * owner, group, extended attributes); bodies without it (block devices, older snapshots) parse
 * as before, and the body re-encodes to its bytes either way.
 */
import { describe, expect, it } from "vitest";
import { FormatError } from "../src/format/codec.js";
import { encodeSnapshotBody, parseSnapshotBody, type DiskSource, type SnapshotBody } from "../src/format/snapshot.js";
import { fromUtf8, utf8 } from "../src/util/bytes.js";

const disk: DiskSource = { kind: "disk", name: "vm.raw", size: 1 << 20, chunkSize: 32768, lists: ["ab".repeat(32)], dataChunks: 3, zeroChunks: 29 };
const ID = "cd".repeat(16);

function roundTrip(body: SnapshotBody): SnapshotBody {
  const bytes = encodeSnapshotBody(body);
  const parsed = parseSnapshotBody(JSON.parse(fromUtf8(bytes)) as unknown);
  expect(fromUtf8(encodeSnapshotBody(parsed))).toBe(fromUtf8(bytes));
  return parsed;
}

describe("a disk source's file metadata", () => {
  it("round-trips with and without extended attributes, and is absent where not recorded", () => {
    const file = { mode: 0o640, mtimeMs: 1_700_000_000_123.5, uid: 107, gid: 36, xattrs: [{ name: "security.selinux", value: utf8("system_u:object_r:svirt_image_t:s0\0") }] };
    expect(roundTrip({ id: ID, sources: [{ ...disk, file }] }).sources[0]).toEqual({ ...disk, file });
    const plain = { mode: 0o600, mtimeMs: 1, uid: 0, gid: 0 };
    expect(roundTrip({ id: ID, sources: [{ ...disk, file: plain }] }).sources[0]).toEqual({ ...disk, file: plain });
    expect(fromUtf8(encodeSnapshotBody({ id: ID, sources: [{ ...disk, file: plain }] }))).toContain(`"file":{"m":384,"mt":1,"u":0,"g":0}`);
    const old = roundTrip({ id: ID, sources: [disk] }).sources[0] as DiskSource;
    expect(old.file).toBeUndefined();
  });

  it.each([
    ["a mode beyond 0o7777", { m: 0o10000, mt: 1, u: 0, g: 0 }],
    ["a negative owner", { m: 0o600, mt: 1, u: -1, g: 0 }],
    ["no group", { m: 0o600, mt: 1, u: 0 }],
    ["a time out of range", { m: 0o600, mt: 9e15, u: 0, g: 0 }],
    ["attributes out of order", { m: 0o600, mt: 1, u: 0, g: 0, x: [["user.b", "00"], ["user.a", "00"]] }],
    ["not an object", "0600"],
  ])("is refused when malformed: %s", (_, file) => {
    const body = JSON.parse(fromUtf8(encodeSnapshotBody({ id: ID, sources: [disk] }))) as { sources: Record<string, unknown>[] };
    (body.sources[0] as Record<string, unknown>)["file"] = file;
    expect(() => parseSnapshotBody(body)).toThrow(FormatError);
  });
});

describe("a snapshot body's libvirt domain", () => {
  const domain = { name: "web1", xml: "<domain type='kvm'><name>web1</name></domain>\n" };

  it("is written after the sources, as a name and the definition's text", () => {
    expect(fromUtf8(encodeSnapshotBody({ id: ID, sources: [disk], domain }))).toBe(
      `{"id":"${ID}","sources":[{"kind":"disk","name":"vm.raw","size":1048576,"chunkSize":32768,"lists":["${"ab".repeat(32)}"],"dataChunks":3,"zeroChunks":29}],"domain":{"name":"web1","xml":"<domain type='kvm'><name>web1</name></domain>\\n"}}`,
    );
  });

  it("round-trips, and is absent where none was kept", () => {
    expect(roundTrip({ id: ID, sources: [disk], domain }).domain).toEqual(domain);
    expect(roundTrip({ id: ID, sources: [disk] }).domain).toBeUndefined();
  });

  it.each([
    ["a name that is no file name", { name: "a/b", xml: "<domain/>" }, /domain file name/],
    ["a name whose file a source already has", { name: "vm", xml: "<domain/>" }, /a source and the domain definition are both named "vm.xml"/],
    ["no definition", { name: "web1" }, /xml/],
    ["not an object", "web1", /domain/],
  ])("is refused when malformed: %s", (_, value, message) => {
    const body = JSON.parse(fromUtf8(encodeSnapshotBody({ id: ID, sources: [{ ...disk, name: "vm.xml" }] }))) as Record<string, unknown>;
    body["domain"] = value;
    expect(() => parseSnapshotBody(body)).toThrow(FormatError);
    expect(() => parseSnapshotBody(body)).toThrow(message);
  });
});

/**
 * The registry's record of a removed user: the snapshots accepted at removal and, since they
 * were introduced, the digests of what the user signed for each. Older versions without
 * digests still parse and re-encode to the same fields. And the config object each version
 * names (configHash), absent from versions written before it was introduced.
 */
import { describe, expect, it } from "vitest";
import { FormatError } from "../src/format/codec.js";
import { encodeRegistryMeta, parseRegistryMeta, type RegistryDoc } from "../src/format/registry.js";

const key = (b: number): Uint8Array => new Uint8Array(32).fill(b);

function doc(removed: RegistryDoc["removed"]): RegistryDoc {
  return {
    repoId: "0123456789abcdef0123456789abcdef",
    version: 3,
    prevHash: "ab".repeat(32),
    time: "2026-11-30T10:00:00.000Z",
    actor: "admin",
    change: "user remove op",
    rootPublicKey: key(1),
    users: [{ name: "admin", role: "admin", signPublicKey: key(2), boxPublicKey: key(3), addedBy: "admin", addedAt: "2026-11-30T09:00:00.000Z" }],
    removed,
    epochs: [{ id: 1, createdAt: "2026-11-30T09:00:00.000Z", dataPublicKey: key(4), metaPublicKey: key(5), auditPublicKey: key(6), chunkKeyEpoch: 1 }],
    currentEpoch: 1,
    destroyedEpochs: [],
    auditHead: null,
  };
}

const op = { name: "op", role: "operator" as const, signPublicKey: key(7), removedBy: "admin", removedAt: "2026-11-30T10:00:00.000Z", snapshots: ["s2", "s1"] };

describe("registry: removed users", () => {
  it("keeps the signed-content digests of accepted snapshots, in a canonical order", () => {
    const digests = { s2: "22".repeat(32), s1: "11".repeat(32) };
    const json = encodeRegistryMeta(doc([{ ...op, snapshotDigests: digests }]));
    const encoded = JSON.stringify(json);
    expect(encoded).toContain(`"snapshotDigests":{"s1":"${"11".repeat(32)}","s2":"${"22".repeat(32)}"}`);
    const back = parseRegistryMeta(JSON.parse(encoded) as unknown);
    expect(back.removed[0]?.snapshotDigests).toEqual(digests);
    expect(JSON.stringify(encodeRegistryMeta(back))).toBe(encoded);
  });

  it("reads a removal recorded without digests (older versions) and writes it back unchanged", () => {
    const encoded = JSON.stringify(encodeRegistryMeta(doc([op])));
    expect(encoded).not.toContain("snapshotDigests");
    const back = parseRegistryMeta(JSON.parse(encoded) as unknown);
    expect(back.removed[0]?.snapshotDigests).toBeUndefined();
    expect(JSON.stringify(encodeRegistryMeta(back))).toBe(encoded);
  });

  it("rejects digests that are not 64 hex digits", () => {
    for (const bad of [{ s1: "11" }, { s1: 5 }, ["11".repeat(32)], "x"]) {
      const json = JSON.parse(JSON.stringify(encodeRegistryMeta(doc([op])))) as { removed: Record<string, unknown>[] };
      (json.removed[0] as Record<string, unknown>)["snapshotDigests"] = bad;
      expect(() => parseRegistryMeta(json)).toThrow(FormatError);
    }
  });
});

describe("registry: the configuration a version names", () => {
  it("keeps configHash when a version names one, and writes a version without it (older versions) back unchanged", () => {
    const named = JSON.stringify(encodeRegistryMeta({ ...doc([]), configHash: "cd".repeat(32) }));
    expect(named).toContain(`"configHash":"${"cd".repeat(32)}"`);
    const back = parseRegistryMeta(JSON.parse(named) as unknown);
    expect(back.configHash).toBe("cd".repeat(32));
    expect(JSON.stringify(encodeRegistryMeta(back))).toBe(named);

    const older = JSON.stringify(encodeRegistryMeta(doc([])));
    expect(older).not.toContain("configHash");
    const old = parseRegistryMeta(JSON.parse(older) as unknown);
    expect(old.configHash).toBeUndefined();
    expect(JSON.stringify(encodeRegistryMeta(old))).toBe(older);
  });

  it("rejects a configHash that is not 64 lower-case hex digits", () => {
    for (const bad of ["cd", "CD".repeat(32), "zz".repeat(32), 5, null, ["cd".repeat(32)]]) {
      const json = JSON.parse(JSON.stringify(encodeRegistryMeta(doc([])))) as Record<string, unknown>;
      json["configHash"] = bad;
      expect(() => parseRegistryMeta(json), JSON.stringify(bad)).toThrow(FormatError);
    }
  });
});

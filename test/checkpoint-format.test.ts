import { describe, expect, it } from "vitest";
import { checkpointSignedMessage, parseCheckpointSigner } from "../src/format/checkpoint.js";
import { FormatError } from "../src/format/codec.js";
import { toHex } from "../src/util/bytes.js";

const hex = (text: string): string => Buffer.from(text, "latin1").toString("hex");
const u32 = (n: number): string => Buffer.from(Uint32Array.of(n).buffer).toString("hex");
const field = (text: string): string => u32(text.length) + hex(text);

describe("re-encryption checkpoint signature format", () => {
  it("the signed message is the context, then kind, repository id, name and envelope body, each u32-length-prefixed (known answer)", () => {
    const body = Uint8Array.of(0x56, 0x4d, 0x56, 0x00, 12, 1, 0, 0, 0xff);
    const message = checkpointSignedMessage("checkpoint", "00112233445566778899aabbccddeeff", "checkpoints/reencrypt/000007", body);
    expect(toHex(message)).toBe(
      field("vmvault re-encryption checkpoint signature v1\0") +
        field("checkpoint") +
        field("00112233445566778899aabbccddeeff") +
        field("checkpoints/reencrypt/000007") +
        u32(body.length) +
        "564d56000c010000ff",
    );
    // Pinned bytes: a change of the construction is a format break.
    expect(toHex(message).slice(0, 16)).toBe("2e000000766d7661");
    // Each bound field changes the message.
    expect(toHex(checkpointSignedMessage("id-map", "00112233445566778899aabbccddeeff", "checkpoints/reencrypt/000007", body))).not.toBe(toHex(message));
    expect(toHex(checkpointSignedMessage("checkpoint", "ffffffffffffffffffffffffffffffff", "checkpoints/reencrypt/000007", body))).not.toBe(toHex(message));
    expect(toHex(checkpointSignedMessage("checkpoint", "00112233445566778899aabbccddeeff", "checkpoints/reencrypt/000008", body))).not.toBe(toHex(message));
  });

  it("the signer is read from the meta; a meta without one (unsigned, older) is a format error", () => {
    expect(parseCheckpointSigner({ repoId: "x", checkpoint: 1, epoch: 2, signer: { name: "admin", registryVersion: 4 } })).toEqual({ name: "admin", registryVersion: 4 });
    expect(() => parseCheckpointSigner({ repoId: "x", checkpoint: 1, epoch: 2 })).toThrow(FormatError);
    expect(() => parseCheckpointSigner({ signer: { name: "admin", registryVersion: -1 } })).toThrow(FormatError);
    expect(() => parseCheckpointSigner({ signer: "admin" })).toThrow(FormatError);
  });
});

import { ByteWriter, FormatError } from "./codec.js";
import { int, obj, str } from "./fields.js";

/** The two objects a re-encryption keeps beside its work; the words are part of the signed message. */
export type CheckpointObject = "checkpoint" | "id-map";

/** Who signed a checkpoint or ID-map batch: an admin, by name, and the registry version in force when it was written. */
export interface CheckpointSigner {
  readonly name: string;
  readonly registryVersion: number;
}

const CONTEXT = "vmvault re-encryption checkpoint signature v1\0";

/**
 * What the admin's Ed25519 key signs for a checkpoint or an ID-map batch: a context string,
 * then (each length-prefixed) the object kind, the repository id, the object's store name and
 * the envelope body (header | meta | sealed payload; the meta names the number, the epoch and
 * the signer). A signature over one object therefore does not verify for another kind, another
 * repository, another number or another payload.
 */
export function checkpointSignedMessage(object: CheckpointObject, repoId: string, name: string, body: Uint8Array): Uint8Array {
  return new ByteWriter(body.length + 256).string(CONTEXT).string(object).string(repoId).string(name).bytes(body).finish();
}

/** The signer named in a checkpoint's readable meta; a FormatError when absent (an unsigned object). */
export function parseCheckpointSigner(meta: unknown): CheckpointSigner {
  const m = obj(meta, "checkpoint meta");
  if (m["signer"] === undefined) throw new FormatError("names no signer");
  const s = obj(m["signer"], "signer");
  return { name: str(s, "name"), registryVersion: int(s, "registryVersion") };
}

import { UsageError } from "../errors.js";
import { FormatError } from "./codec.js";
import { arr, int, obj, optStr, str, type Json } from "./fields.js";
import { concatBytes, fromHex, utf8 } from "../util/bytes.js";
import { encodeFileMeta, parseFileMeta, type FileMeta } from "./entries.js";
import type { AuditHead } from "./registry.js";

/** Readable part of a snapshot object (no secrets, nothing about the VM). */
export interface SnapshotMeta {
  readonly repoId: string;
  readonly snapshotId: string;
  /** Grows each time the snapshot object is rewritten (re-sealed or re-encrypted); readers take the newest they can open. */
  readonly revision: number;
  readonly sessionId: string;
  /** Epoch whose metadata key the header is sealed to. */
  readonly epoch: number;
}

export function encodeSnapshotMeta(m: SnapshotMeta): Json {
  return { ...m };
}

export function parseSnapshotMeta(value: unknown): SnapshotMeta {
  const o = obj(value, "snapshot");
  return {
    repoId: str(o, "repoId"),
    snapshotId: str(o, "snapshotId"),
    revision: int(o, "revision"),
    sessionId: str(o, "sessionId"),
    epoch: int(o, "epoch"),
  };
}

/** What a VM may be called: the same rule for naming it in a backup and for picking its snapshots. */
const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$/;

export function assertVmName(vm: string): void {
  if (!VM_NAME.test(vm)) throw new UsageError(`invalid VM name ${JSON.stringify(vm)}`, "use letters, digits and . _ : @ + - (up to 128)");
}

/** Sealed to the metadata key: what `snapshots` lists. */
export interface SnapshotHeader {
  readonly id: string;
  readonly vm: string;
  readonly host: string;
  readonly time: string;
  readonly creator: string;
  readonly creatorKey: string;
  /**
   * Who signed this revision when it is not the creator: an admin who re-encrypted the
   * snapshot, with the registry version in force then. Absent for the creator's own revision.
   */
  readonly rewrittenBy?: { readonly name: string; readonly key: string; readonly registryVersion: number; readonly time: string };
  readonly registryVersion: number;
  readonly parent: string | null;
  /** Logical bytes of all sources. */
  readonly size: number;
  /** Bytes this snapshot added to the repository (after dedup and compression). */
  readonly addedBytes: number;
  readonly disks: readonly string[];
  readonly folders: readonly string[];
  readonly auditHead: AuditHead | null;
  /** Random, so the header digest in the signature cannot be guessed. */
  readonly salt: string;
}

export function encodeSnapshotHeader(h: SnapshotHeader): Uint8Array {
  return utf8(JSON.stringify(h));
}

function strings(o: Json, key: string): string[] {
  return arr(o, key).map((v) => {
    if (typeof v !== "string") throw new FormatError(`field ${key} holds a non-string`);
    return v;
  });
}

export function parseSnapshotHeader(value: unknown): SnapshotHeader {
  const o = obj(value, "snapshot header");
  const head = o["auditHead"];
  const rw = o["rewrittenBy"];
  let rewrittenBy: SnapshotHeader["rewrittenBy"];
  if (rw !== undefined && rw !== null) {
    const r = obj(rw, "rewrittenBy");
    rewrittenBy = { name: str(r, "name"), key: str(r, "key"), registryVersion: int(r, "registryVersion"), time: str(r, "time") };
  }
  return {
    id: str(o, "id"),
    vm: str(o, "vm"),
    host: str(o, "host"),
    time: str(o, "time"),
    creator: str(o, "creator"),
    creatorKey: str(o, "creatorKey"),
    registryVersion: int(o, "registryVersion"),
    parent: optStr(o, "parent") ?? null,
    size: int(o, "size"),
    addedBytes: int(o, "addedBytes"),
    disks: strings(o, "disks"),
    folders: strings(o, "folders"),
    auditHead:
      head === null || head === undefined
        ? null
        : { seq: int(obj(head, "auditHead"), "seq"), hash: str(obj(head, "auditHead"), "hash") },
    salt: str(o, "salt"),
    // Last, as rewriteSnapshot appends it: a parsed header re-encodes to the same bytes.
    ...(rewrittenBy === undefined ? {} : { rewrittenBy }),
  };
}

/** A disk image source: its chunk list lives in list blobs, one per LIST_SPAN chunk positions. */
export interface DiskSource {
  readonly kind: "disk";
  readonly name: string;
  readonly size: number;
  readonly chunkSize: number;
  readonly lists: readonly string[];
  readonly dataChunks: number;
  readonly zeroChunks: number;
  /**
   * The image file's mode, time, owner, group and extended attributes, restored with it; absent
   * for a block device (what its node's mode means does not carry over to a file) and in
   * snapshots written before they were recorded.
   */
  readonly file?: FileMeta;
  /**
   * The source image's format, as QEMU names it, when it was not raw (`qcow2`): what the
   * backup read through qemu-nbd. The chunks hold the disk as the guest sees it either way, so
   * this only says what the image was; a restore writes the format it is asked for.
   */
  readonly format?: string;
}

/** A folder source: its entries (paths, modes, chunk lists) live in entry blobs. */
export interface FolderSource {
  readonly kind: "folder";
  readonly name: string;
  readonly path: string;
  readonly entries: readonly string[];
  readonly files: number;
  readonly dirs: number;
  readonly symlinks: number;
  readonly size: number;
}

export type SnapshotSource = DiskSource | FolderSource;

/**
 * Why a source name cannot be used, or undefined when it can. A restore writes each source to
 * DIR/<name>, so a name must be exactly one file name: not empty, "." or "..", without "/" or
 * NUL, and well-formed text (a lone surrogate reaches the file system as U+FFFD, a second
 * spelling of another name). A backup takes the name from the source's own base name.
 */
export function sourceNameProblem(name: string): string | undefined {
  if (name === "" || name === "." || name === "..") return "is not a file name";
  if (name.includes("/") || name.includes("\0")) return "holds / or NUL";
  if (/\p{Cs}/u.test(name)) return "is not well-formed text";
  return undefined;
}

/**
 * A VM's libvirt domain definition, kept with the snapshot of its disks (whose names are the
 * definition's target devices). A restore writes it to DIR/<name>.xml.
 */
export interface SnapshotDomain {
  readonly name: string;
  /** The definition as libvirt gave it (`virsh dumpxml --inactive --security-info`). */
  readonly xml: string;
}

/** Encrypted under the session key: where the data is. */
export interface SnapshotBody {
  readonly id: string;
  readonly sources: readonly SnapshotSource[];
  /** Absent in snapshots of sources named one by one, and in those written before domains were kept. */
  readonly domain?: SnapshotDomain;
}

/** The file a restore writes a snapshot's domain definition to, beside its sources. */
export function domainFileName(name: string): string {
  return `${name}.xml`;
}

export function encodeSnapshotBody(b: SnapshotBody): Uint8Array {
  const sources = b.sources.map((s) => (s.kind === "disk" && s.file !== undefined ? { ...s, file: encodeFileMeta(s.file) } : s));
  return utf8(JSON.stringify({ ...b, sources }));
}

export function parseSnapshotBody(value: unknown): SnapshotBody {
  const o = obj(value, "snapshot body");
  const sources = arr(o, "sources").map((v): SnapshotSource => {
    const s = obj(v, "source");
    const kind = str(s, "kind");
    if (kind === "disk") {
      return {
        kind,
        name: str(s, "name"),
        size: int(s, "size"),
        chunkSize: int(s, "chunkSize"),
        lists: strings(s, "lists"),
        dataChunks: int(s, "dataChunks"),
        zeroChunks: int(s, "zeroChunks"),
        ...(s["file"] === undefined || s["file"] === null ? {} : { file: parseFileMeta(obj(s["file"], "disk file")) }),
        ...(s["format"] === undefined || s["format"] === null ? {} : { format: str(s, "format") }),
      };
    }
    if (kind === "folder") {
      return {
        kind,
        name: str(s, "name"),
        path: str(s, "path"),
        entries: strings(s, "entries"),
        files: int(s, "files"),
        dirs: int(s, "dirs"),
        symlinks: int(s, "symlinks"),
        size: int(s, "size"),
      };
    }
    throw new FormatError(`unknown source kind ${JSON.stringify(kind)}`);
  });
  // Restore writes DIR/<name> for each source: one file name each, no two alike.
  const names = new Set<string>();
  for (const { name } of sources) {
    const problem = sourceNameProblem(name);
    if (problem !== undefined) throw new FormatError(`source name ${JSON.stringify(name)} ${problem}`);
    if (names.has(name)) throw new FormatError(`two sources are named ${JSON.stringify(name)}`);
    names.add(name);
  }
  let domain: SnapshotDomain | undefined;
  if (o["domain"] !== undefined && o["domain"] !== null) {
    const d = obj(o["domain"], "domain");
    domain = { name: str(d, "name"), xml: str(d, "xml") };
    const file = domainFileName(domain.name);
    const problem = sourceNameProblem(file);
    if (problem !== undefined) throw new FormatError(`domain file name ${JSON.stringify(file)} ${problem}`);
    if (names.has(file)) throw new FormatError(`a source and the domain definition are both named ${JSON.stringify(file)}`);
  }
  return { id: str(o, "id"), sources, ...(domain === undefined ? {} : { domain }) };
}

/** Associated data of the body: binds it to its snapshot and session. */
export function snapshotBodyAd(snapshotId: string, sessionId: string): Uint8Array {
  return concatBytes([utf8("vmvault snapshot body v1\0"), fromHex(snapshotId), fromHex(sessionId)]);
}

/** The message the creator signs; the sealed header is excluded so rotation can re-seal it. */
export function snapshotSignedMessage(snapshotId: string, sessionId: string, headerDigest: Uint8Array, body: Uint8Array): Uint8Array {
  return concatBytes([utf8("vmvault snapshot signature v1\0"), fromHex(snapshotId), fromHex(sessionId), headerDigest, body]);
}

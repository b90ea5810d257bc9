import { IntegrityError, NotFoundError, type Damage } from "../errors.js";
import type { IndexedPack } from "../format/index-file.js";
import { PACK_PREFIX, parsePackKey, parseVersionedKey } from "../format/layout.js";
import type { PackEntry } from "../format/pack.js";
import { PackError, readPackSession, readPackTrailer, TRAILER_DOES_NOT_AUTHENTICATE } from "../pack/reader.js";
import { INDEX_DOES_NOT_AUTHENTICATE, loadIndex, writeIndexFile } from "../repository/index-files.js";
import { acquireLock } from "../repository/lock.js";
import type { Repository } from "../repository/repository.js";
import { SessionKeys } from "../repository/sessions.js";
import { listAll, listKeys, STORE_REQUESTS_AT_ONCE } from "../storage/types.js";
import { fromHex, toHex } from "../util/bytes.js";
import { throttled, type ProgressSink } from "../util/progress.js";
import { audited, authorizeAudited } from "../audit/guard.js";
import { mapOrdered } from "../util/ordered.js";

export interface RepairIndexOptions {
  readonly progress?: ProgressSink;
}

export interface RepairIndexResult {
  /** Packs in the repository. */
  readonly packs: number;
  /** Packs no readable index listed, now indexed from their own trailers. */
  readonly packsIndexed: number;
  readonly chunksIndexed: number;
  /** Index files written. */
  readonly indexFiles: readonly string[];
  /** Index files that did not authenticate, removed once every pack was indexed without them. */
  readonly removedIndexes: readonly string[];
  /** Index files left in place: unreadable for another reason (a key this user does not hold). */
  readonly unreadableIndexes: readonly Damage[];
  /** Packs whose trailer could not be read: not indexed (`check` names them). */
  readonly unreadablePacks: readonly Damage[];
}

/**
 * A pack's trailer, opened under the session its clear prefix names. The prefix is not
 * authenticated: where it does not parse, names a session that does not open, or one whose key
 * does not open the trailer, every session of the repository is tried in turn, and the one
 * whose key opens the trailer, which names that same session, is the pack's (a damaged prefix
 * costs a search, not the pack). Otherwise the first failure stands.
 */
export async function trailerOf(
  repo: Repository,
  sessions: SessionKeys,
  p: { readonly packId: string; readonly key: string; readonly size: number },
  candidates: () => Promise<string[]>,
): Promise<{ sessionId: string; entries: PackEntry[] }> {
  let named: string | undefined;
  try {
    named = await readPackSession(repo.store, p.key);
    const session = await sessions.open(named);
    return await readPackTrailer(repo.crypto, repo.store, p.key, p.packId, p.size, session.key);
  } catch (first) {
    const search = first instanceof IntegrityError || (first instanceof PackError && (named === undefined || first.message === TRAILER_DOES_NOT_AUTHENTICATE));
    if (!search) throw first;
    for (const id of await candidates()) {
      if (id === named) continue;
      let key;
      try {
        key = (await sessions.open(id)).key;
      } catch (e) {
        if (e instanceof IntegrityError || e instanceof NotFoundError) continue;
        throw e;
      }
      try {
        const trailer = await readPackTrailer(repo.crypto, repo.store, p.key, p.packId, p.size, key);
        if (trailer.sessionId === id) return trailer;
      } catch (e) {
        if (!(e instanceof PackError)) throw e;
      }
    }
    throw first;
  }
}

/**
 * trailerOf for each pack, a few packs at once (each is round trips to a remote store), yielded
 * in the packs' order; a pack whose trailer cannot be had comes with its error instead.
 */
export function trailersInOrder<P extends { readonly packId: string; readonly key: string; readonly size: number }>(
  repo: Repository,
  sessions: SessionKeys,
  packs: readonly P[],
  candidates: () => Promise<string[]>,
): AsyncGenerator<{ p: P; trailer: { sessionId: string; entries: PackEntry[] } } | { p: P; error: unknown }> {
  return mapOrdered(packs, STORE_REQUESTS_AT_ONCE, (p) =>
    trailerOf(repo, sessions, p, candidates).then(
      (trailer) => ({ p, trailer }),
      (error: unknown) => ({ p, error }),
    ),
  );
}

/**
 * The sessions trailerOf tries for a pack whose prefix does not lead to its session: listed
 * once, on first need, and then known to `sessions` (no listing per envelope opened).
 */
export function sessionCandidates(repo: Repository, sessions: SessionKeys): () => Promise<string[]> {
  let sessionIds: Promise<string[]> | undefined;
  return () => {
    sessionIds ??= listKeys(repo.store, "sessions/").then((keys) => {
      sessions.know(keys);
      return [...new Set(keys.map((k) => parseVersionedKey(k, "sessions/")?.name).filter((id) => id !== undefined))];
    });
    return sessionIds;
  };
}

/** Packs per index file written: index files stay around the size a backup writes. */
const PACKS_PER_INDEX_FILE = 64;

/**
 * Rebuilds the index entries of every pack no readable index file lists, from the pack's own
 * authenticated trailer (the list of chunks it holds, sealed with its backup session's key), and
 * removes index files that do not authenticate once every pack is indexed without them. Packs an
 * interrupted backup left behind are indexed too, so later backups deduplicate against them.
 * The chunks themselves are not read: `check --read-data` verifies them.
 */
export async function repairIndex(repo: Repository, o: RepairIndexOptions = {}): Promise<RepairIndexResult> {
  await authorizeAudited(repo, "repair", "repair index");
  return audited(repo, {
    entry: { action: "repair index" },
    started: false,
    run: () => runRepair(repo, o),
    outcome: (r) => ({ indexed: String(r.packsIndexed), removed: [...r.removedIndexes] }),
  });
}

async function runRepair(repo: Repository, o: RepairIndexOptions): Promise<RepairIndexResult> {
  const progress = throttled(o.progress);
  // Exclusive: no backup adds index files while unreadable ones are judged and removed.
  const lock = await acquireLock(repo, "repair index", true);
  const sessions = new SessionKeys(repo);
  try {
    const indexed = new Set<string>();
    const index = await loadIndex(repo, undefined, undefined, { locations: false, skipDamaged: true, onPack: (p) => indexed.add(toHex(p.packId)) });
    const stored: { packId: string; key: string; size: number }[] = [];
    for (const obj of await listAll(repo.store, PACK_PREFIX)) {
      const packId = parsePackKey(obj.key);
      if (packId !== undefined) stored.push({ packId, key: obj.key, size: obj.size });
    }
    const found: IndexedPack[] = [];
    const unreadablePacks: Damage[] = [];
    const candidates = sessionCandidates(repo, sessions);
    const missing = stored.filter((p) => !indexed.has(p.packId));
    let done = 0;
    for await (const r of trailersInOrder(repo, sessions, missing, candidates)) {
      progress({ phase: "read pack trailers", done: ++done, total: missing.length, unit: "items" });
      const p = r.p;
      if (!("error" in r)) {
        found.push({ packId: fromHex(p.packId), sessionId: fromHex(r.trailer.sessionId), packLength: p.size, entries: r.trailer.entries });
      } else {
        const e = r.error;
        if (e instanceof PackError) unreadablePacks.push({ object: p.key, problem: e.message });
        else if (e instanceof IntegrityError) unreadablePacks.push(...e.damage.map((d) => ({ object: p.key, problem: `${d.object}: ${d.problem}` })));
        else if (e instanceof NotFoundError) unreadablePacks.push({ object: p.key, problem: "pack disappeared while repairing" });
        else throw e;
      }
    }
    const indexFiles: string[] = [];
    for (let at = 0; at < found.length; at += PACKS_PER_INDEX_FILE) {
      progress({ phase: "write index files", done: Math.min(at + PACKS_PER_INDEX_FILE, found.length), total: found.length, unit: "items" });
      indexFiles.push(await writeIndexFile(repo, repo.store, found.slice(at, at + PACKS_PER_INDEX_FILE)));
    }
    // An index file that does not authenticate can only describe packs: once every stored pack
    // is listed by a readable file, it adds nothing but a damage report on every check.
    const removedIndexes: string[] = [];
    const unreadableIndexes: Damage[] = [];
    for (const d of index.damaged) {
      if (d.problem === INDEX_DOES_NOT_AUTHENTICATE && unreadablePacks.length === 0) {
        await repo.store.delete(d.object);
        removedIndexes.push(d.object);
      } else unreadableIndexes.push(d);
    }
    return {
      packs: stored.length,
      packsIndexed: found.length,
      chunksIndexed: found.reduce((n, p) => n + p.entries.length, 0),
      indexFiles,
      removedIndexes,
      unreadableIndexes,
      unreadablePacks,
    };
  } finally {
    sessions.dispose();
    await lock.release();
  }
}


import { IntegrityError, NotFoundError } from "../errors.js";
import type { CryptoSuite } from "../crypto/suite.js";
import { packKey } from "../format/layout.js";
import { encodePackEntries, type PackEntry } from "../format/pack.js";
import { PackError, readPackSession, readPackTrailer } from "../pack/reader.js";
import { readIndexFile } from "../repository/index-files.js";
import { chunkKeyFor, type Repository } from "../repository/repository.js";
import type { SessionKeys } from "../repository/sessions.js";
import { bytesEqual, toHex } from "../util/bytes.js";
import { mapOrdered } from "../util/ordered.js";
import type { ProgressSink } from "../util/progress.js";
import { BadLocations, FALLBACK, place } from "./check-attribution.js";
import type { PackDataResult, PackVerifier } from "./check-data.js";
import { STORE_REQUESTS_AT_ONCE } from "../storage/types.js";

/**
 * Packs whose trailers are read ahead of the one being checked: for a structural check, whose
 * time is those reads; with --read-data the verification of the packs' data is the longer
 * work, and trailers read further ahead would only wait in memory (a check of the 16 GiB
 * benchmark image peaked 2-3 MiB higher with eight).
 */
const TRAILER_READS = { structure: STORE_REQUESTS_AT_ONCE, data: 2 } as const;

/**
 * One index file's listing of a pack, without one object per chunk: its entries are kept as a
 * digest (compared with the pack's trailer) and read again from the index file only when needed.
 */
export interface Listing {
  readonly indexKey: string;
  /** Which of that file's listings of the pack this is (a file may list a pack more than once). */
  readonly nth: number;
  readonly sessionId: string;
  readonly packLength: number;
  readonly entriesDigest: Uint8Array;
}

/** A damaged pack or listing; snapshots are those that lose data through it (see BadLocations). */
export interface Finding {
  readonly object: string;
  readonly problem: string;
  readonly snapshots: Set<string>;
}

/** What check reports for a pack (notes: one problem) or for one index file's listing of a pack (its notes, joined). */
interface PackFinding {
  readonly object: string;
  readonly listed?: string;
  readonly notes: string[];
  readonly snapshots: Set<string>;
}

type Trailer =
  | {
      readonly sessionId: string;
      readonly entries: readonly PackEntry[];
      readonly digest: Uint8Array;
      /** With --read-data: what is wrong with the pack's clear prefix, if anything. */
      readonly prefixProblem?: string;
    }
  | { readonly problems: readonly string[]; readonly session: boolean };

/**
 * Checks every indexed pack against every listing of it. Any role holding the index key can
 * list a pack again (or list chunk IDs in a pack that does not exist), so one listing per pack
 * would let such a listing hide the real one or go unchecked. The listings equal to the pack's
 * trailer (authenticated under its session key) are its own: missing, truncated and trailer
 * problems are the pack's damage, as are its own chunks that fail --read-data. What another
 * listing places in the pack beyond them must be there (in the trailer; with --read-data, it must
 * decrypt and match its ID); what is not is that listing's damage, named by its index file.
 * Every location found bad is recorded in `bad`, for attribution.
 */
export class PackChecks {
  readonly bad = new BadLocations<PackFinding>();
  bytesRead = 0;
  /** Packs whose chunks were decrypted and verified. */
  packsRead = 0;
  /** Most verification jobs submitted and not yet settled at once. */
  maxUnsettled = 0;
  readonly #repo: Repository;
  readonly #sessions: SessionKeys;
  readonly #listings: ReadonlyMap<string, readonly Listing[]>;
  readonly #stored: ReadonlyMap<string, number>;
  readonly #findings: PackFinding[] = [];
  readonly #listingFindings = new Map<Listing, PackFinding>();
  /** Packs damaged as a whole (missing, or of a length no listing gives): not read further. */
  readonly #whole = new Set<string>();
  /**
   * Verification jobs not yet settled, in the order submitted. Each is settled (and its result
   * dropped) as soon as it and every job before it have finished, so what they hold stays
   * bounded by the jobs in flight, not the size of the repository.
   */
  readonly #jobs: { job: string; settle: (r: PackDataResult) => void }[] = [];

  constructor(repo: Repository, sessions: SessionKeys, listings: ReadonlyMap<string, readonly Listing[]>, stored: ReadonlyMap<string, number>) {
    this.#repo = repo;
    this.#sessions = sessions;
    this.#listings = listings;
    this.#stored = stored;
  }

  /**
   * Every pack must be stored with the length a listing gives (any user may check this: no key
   * needed). Which listing is wrong about it is decided with the trailer when it is read
   * (withTrailers): a listing can claim a truncated pack's new length.
   */
  checkPresence(withTrailers: boolean): void {
    for (const [packId, ls] of this.#listings) {
      const size = this.#stored.get(packId);
      const last = ls[ls.length - 1] as Listing;
      if (size === undefined) {
        this.#whole.add(packId);
        this.bad.markPack(packId, this.#packFinding(packId, "pack is missing"));
      } else if (!ls.some((l) => l.packLength === size)) {
        this.#whole.add(packId);
        this.bad.markPack(packId, this.#packFinding(packId, `pack has ${size} bytes, the index says ${last.packLength} (truncated or modified)`));
      } else if (!withTrailers) {
        for (const l of ls) if (l.packLength !== size) this.#listingFinding(l, packId, lengthNote(l, size));
      }
    }
  }

  /**
   * Trailers, and with a verifier (--read-data) the chunks of every listing, of every pack not
   * damaged as a whole; with `reads`, only the chunks of the packs it selects (`check
   * --read-data-subset`), the others' trailers and listings checked as without --read-data.
   */
  async checkContents(verifier: PackVerifier | undefined, progress: ProgressSink, reads?: (packId: string) => boolean, signal?: AbortSignal): Promise<void> {
    let n = 0;
    const packs: { packId: string; ls: readonly Listing[]; size: number }[] = [];
    for (const [packId, ls] of this.#listings) {
      const size = this.#stored.get(packId);
      if (size !== undefined && !this.#whole.has(packId)) packs.push({ packId, ls, size });
    }
    // Trailers are read a few packs ahead (reading one is a round trip to the store, and has no
    // effect on what is found); each pack is then checked in turn, as before.
    const verifierFor = (packId: string): PackVerifier | undefined => (reads === undefined || reads(packId) ? verifier : undefined);
    const withTrailers = async (p: (typeof packs)[number]) => ({ ...p, trailers: await this.#trailers(p.packId, p.ls, p.size, verifierFor(p.packId) !== undefined) });
    for await (const { packId, ls, size, trailers } of mapOrdered(packs, verifier !== undefined ? TRAILER_READS.data : TRAILER_READS.structure, withTrailers)) {
      signal?.throwIfAborted();
      n++;
      progress({ phase: verifier !== undefined ? "check data" : "check packs", done: n, total: packs.length, unit: "items" });
      // Damage that loses no chunk (readers go by the index and the authenticated trailer):
      // named, with no location marked bad.
      for (const t of trailers.values()) if ("entries" in t && t.prefixProblem !== undefined) this.#packFinding(packId, t.prefixProblem);
      const v = verifierFor(packId);
      if (v !== undefined) this.packsRead++;
      await this.#checkPack(packId, ls, size, trailers, v);
    }
    if (verifier === undefined) return;
    await verifier.finish();
    this.#settle(verifier);
  }

  /** Settles the finished jobs at the head of the queue, in the order they were submitted. */
  #settle(verifier: PackVerifier): void {
    for (let next = this.#jobs[0]; next !== undefined; next = this.#jobs[0]) {
      const r = verifier.results.get(next.job);
      if (r === undefined) return;
      verifier.results.delete(next.job);
      this.#jobs.shift();
      this.bytesRead += r.bytesRead;
      next.settle(r);
    }
  }

  /** The damage found, in the order found; snapshots filled in by attribution. */
  findings(): Finding[] {
    return this.#findings.map((f) => ({
      object: f.object,
      problem:
        f.listed === undefined
          ? (f.notes[0] as string)
          : `${packKey(f.listed)} as this index file lists it: ${f.notes.join("; ")} ${FALLBACK}`,
      snapshots: f.snapshots,
    }));
  }

  /** The pack's trailer, read under each session a listing of the right length names (normally one). */
  async #trailers(packId: string, ls: readonly Listing[], size: number, forVerifier: boolean): Promise<Map<string, Trailer>> {
    const trailers = new Map<string, Trailer>();
    for (const l of ls) {
      if (l.packLength === size && !trailers.has(l.sessionId)) trailers.set(l.sessionId, await this.#trailer(packId, l.sessionId, size, forVerifier));
    }
    return trailers;
  }

  async #checkPack(packId: string, ls: readonly Listing[], size: number, trailers: ReadonlyMap<string, Trailer>, verifier: PackVerifier | undefined): Promise<void> {
    const own = ls.filter((l) => {
      const t = trailers.get(l.sessionId);
      return l.packLength === size && t !== undefined && "entries" in t && t.sessionId === l.sessionId && bytesEqual(t.digest, l.entriesDigest);
    });
    const first = own[0];
    if (first === undefined) return this.#withoutOwnListing(packId, ls, size, trailers, verifier);
    const trailer = trailers.get(first.sessionId) as Extract<Trailer, { entries: unknown }>;
    if (verifier !== undefined) {
      // The pack's own chunks: one that fails is the pack's damage, whoever else lists it.
      await this.#submit(verifier, `${packId} own`, packId, first.sessionId, size, trailer.entries, (r) => {
        if (r.badEntries === undefined) {
          for (const m of r.messages) this.bad.markPack(packId, this.#packFinding(packId, m));
        } else if (r.badEntries.length > 0) {
          const f = this.#packFinding(packId, r.messages[0] as string);
          for (const e of r.badEntries) this.bad.markEntry(packId, e, f);
        }
      });
    }
    const others = ls.filter((l) => !own.includes(l));
    if (others.length === 0) return;
    // What other listings place in the pack beyond its own entries, verified once per place.
    const ownPlaces = new Set(trailer.entries.map(placeOf));
    const added = new Map<Listing, { extra: readonly PackEntry[]; total: number }>();
    const union = new Map<string, PackEntry>();
    for (const l of others) {
      if (l.packLength !== size) this.#listingFinding(l, packId, lengthNote(l, size));
      let entries: readonly PackEntry[];
      try {
        entries = await listedEntries(this.#repo, l, packId);
      } catch (e) {
        if (!(e instanceof IntegrityError)) throw e;
        for (const d of e.damage) this.#listingFinding(l, packId, `${d.object}: ${d.problem}`);
        continue;
      }
      const extra = entries.filter((e) => !ownPlaces.has(placeOf(e)));
      if (l.sessionId !== first.sessionId) {
        // The trailer, authenticated under the pack's session key, names that session: nothing sealed under another opens here.
        const f = this.#listingFinding(l, packId, `it names session ${l.sessionId}, the pack's trailer session ${first.sessionId}, so ${extra.length} of its ${entries.length} chunks there cannot verify`);
        for (const e of extra) this.bad.markEntry(packId, e, f);
      } else if (verifier === undefined) {
        // Structure only: the trailer lists every chunk the pack holds.
        if (extra.length === 0) continue;
        const f = this.#listingFinding(l, packId, `${extra.length} of its ${entries.length} chunks there are not in the pack's trailer`);
        for (const e of extra) this.bad.markEntry(packId, e, f);
      } else {
        added.set(l, { extra, total: entries.length });
        for (const e of extra) union.set(placeOf(e), e);
      }
    }
    if (verifier === undefined || union.size === 0) return;
    await this.#submit(verifier, `${packId} listed`, packId, first.sessionId, size, [...union.values()], (r) => {
      const failed = r.badEntries === undefined ? undefined : new Set(r.badEntries.map(placeOf));
      for (const [l, { extra, total }] of added) {
        const bad = failed === undefined ? extra : extra.filter((e) => failed.has(placeOf(e)));
        if (bad.length === 0) continue;
        const why = failed === undefined ? ` (${r.messages.join("; ")})` : "";
        const f = this.#listingFinding(l, packId, `${bad.length} of its ${total} chunks there do not verify${why}`);
        for (const e of bad) this.bad.markEntry(packId, e, f);
      }
    });
  }

  /**
   * No listing is the trailer's: the pack's damage, as with a single listing. Its chunks are
   * then checked where each listing places them, under the session that listing names: with
   * --read-data, those that fail are lost there; without, only those of a session that does not
   * open (the others are presumed good: the trailer alone may be damaged).
   */
  async #withoutOwnListing(packId: string, ls: readonly Listing[], size: number, trailers: ReadonlyMap<string, Trailer>, verifier: PackVerifier | undefined): Promise<void> {
    for (const t of trailers.values()) {
      if ("entries" in t) this.#packFinding(packId, "pack trailer does not match the index");
      else if (!t.session) for (const p of t.problems) this.#packFinding(packId, p);
    }
    // A listing of another length is not shown wrong by a trailer that matches none: the pack may
    // be truncated (and another listing claim its new length). Without --read-data every location
    // in it is then bad, as for a pack of a length no listing gives.
    for (const l of ls) {
      if (l.packLength === size) continue;
      const f = this.#packFinding(packId, `pack has ${size} bytes, the index says ${l.packLength} (truncated or modified)`);
      if (verifier === undefined) this.bad.markPack(packId, f);
    }
    const bySession = new Map<string, Map<string, PackEntry>>();
    for (const l of ls) {
      let entries: readonly PackEntry[];
      try {
        entries = await listedEntries(this.#repo, l, packId);
      } catch (e) {
        if (!(e instanceof IntegrityError)) throw e;
        for (const d of e.damage) this.#packFinding(packId, `${d.object}: ${d.problem}`);
        continue;
      }
      const group = bySession.get(l.sessionId) ?? new Map<string, PackEntry>();
      bySession.set(l.sessionId, group);
      for (const e of entries) group.set(placeOf(e), e);
    }
    for (const [sessionId, group] of bySession) {
      const entries = [...group.values()];
      const t = trailers.get(sessionId);
      if (t !== undefined && "problems" in t && t.session) {
        const found = t.problems.map((p) => this.#packFinding(packId, p));
        for (const e of entries) for (const f of found) this.bad.markEntry(packId, e, f);
        continue;
      }
      if (verifier === undefined) continue;
      await this.#submit(verifier, `${packId} ${sessionId}`, packId, sessionId, size, entries, (r) => {
        if (r.badEntries === undefined) {
          const found = r.messages.map((m) => this.#packFinding(packId, m));
          for (const e of entries) for (const f of found) this.bad.markEntry(packId, e, f);
        } else if (r.badEntries.length > 0) {
          const f = this.#packFinding(packId, r.messages[0] as string);
          for (const e of r.badEntries) this.bad.markEntry(packId, e, f);
        }
      });
    }
  }

  async #trailer(packId: string, sessionId: string, size: number, forVerifier: boolean): Promise<Trailer> {
    let sessionKey;
    try {
      const session = await this.#sessions.open(sessionId);
      sessionKey = session.key;
      // The verifier needs this session's chunk-ID key: a missing one is this pack's damage.
      if (forVerifier) chunkKeyFor(this.#repo, session.meta.chunkKeyEpoch);
    } catch (e) {
      if (e instanceof IntegrityError) return { problems: e.damage.map((d) => `${d.object}: ${d.problem}`), session: true };
      throw e;
    }
    try {
      const t = await readPackTrailer(this.#repo.crypto, this.#repo.store, packKey(packId), packId, size, sessionKey);
      const digest = entriesDigest(this.#repo.crypto, t.entries);
      // --read-data reads every byte: the prefix too, which names the session in clear (where
      // `repair index` looks for a pack's session first) and which nothing authenticates.
      const prefixProblem = forVerifier ? await prefixProblemOf(this.#repo, packId, t.sessionId) : undefined;
      return { sessionId: t.sessionId, entries: t.entries, digest, ...(prefixProblem === undefined ? {} : { prefixProblem }) };
    } catch (e) {
      if (e instanceof PackError) return { problems: [e.message], session: false };
      if (e instanceof NotFoundError) return { problems: ["pack is missing"], session: false };
      throw e;
    }
  }

  async #submit(verifier: PackVerifier, job: string, packId: string, sessionId: string, size: number, entries: readonly PackEntry[], settle: (r: PackDataResult) => void): Promise<void> {
    await verifier.submit(job, packId, sessionId, size, entries);
    this.#jobs.push({ job, settle });
    this.#settle(verifier);
    this.maxUnsettled = Math.max(this.maxUnsettled, this.#jobs.length);
  }

  /** The pack's finding with this problem (one per problem, as check always reported them). */
  #packFinding(packId: string, problem: string): PackFinding {
    const object = packKey(packId);
    let f = this.#findings.find((x) => x.listed === undefined && x.object === object && x.notes[0] === problem);
    if (f === undefined) {
      f = { object, notes: [problem], snapshots: new Set() };
      this.#findings.push(f);
    }
    return f;
  }

  /** The finding of one index file's listing of a pack, gathering what is wrong with it. */
  #listingFinding(l: Listing, packId: string, note: string): PackFinding {
    let f = this.#listingFindings.get(l);
    if (f === undefined) {
      f = { object: l.indexKey, listed: packId, notes: [], snapshots: new Set() };
      this.#listingFindings.set(l, f);
      this.#findings.push(f);
    }
    f.notes.push(note);
    return f;
  }
}

function lengthNote(l: Listing, size: number): string {
  return `it gives its length as ${l.packLength} bytes, the pack has ${size}`;
}

function placeOf(e: PackEntry): string {
  return place(e.offset, e.length, e.rawLength, e.chunkId);
}

/** Digest of an entry list as index files and trailers encode it: equal digests, equal lists. */
function entriesDigest(crypto: CryptoSuite, entries: readonly PackEntry[]): Uint8Array {
  return crypto.hash(encodePackEntries(entries));
}

/**
 * What is wrong with a pack's clear prefix (its object header and the session it names), given
 * the session its authenticated trailer names; undefined when nothing is.
 */
async function prefixProblemOf(repo: Repository, packId: string, trailerSession: string): Promise<string | undefined> {
  let named: string;
  try {
    named = await readPackSession(repo.store, packKey(packId));
  } catch (e) {
    if (e instanceof PackError) return `${e.message}; ${PREFIX_LOSES_NOTHING}`;
    throw e;
  }
  if (named === trailerSession) return undefined;
  return `pack prefix names session ${named}, its authenticated trailer ${trailerSession}; ${PREFIX_LOSES_NOTHING}`;
}

/** Why a damaged prefix costs nothing: what a reader uses, it takes from elsewhere. */
const PREFIX_LOSES_NOTHING = "no chunk is lost: readers go by the index and the pack's authenticated trailer, and `vmvault repair index` finds the pack's session without the prefix";

/** A pack's entries as one listing of it gives them, read again from its index file. */
async function listedEntries(repo: Repository, l: Listing, packId: string): Promise<readonly PackEntry[]> {
  const file = await readIndexFile(repo, l.indexKey);
  const p = file.packs.filter((x) => toHex(x.packId) === packId)[l.nth];
  if (p === undefined) throw IntegrityError.object(l.indexKey, `index no longer lists ${packKey(packId)} (changed while checking)`);
  return p.entries;
}

/**
 * FastCDC content-defined chunking (Xia et al., 2016) with normalized chunking level 2 and a
 * per-repository gear table, so chunk boundaries do not reveal content across repositories.
 */
export interface CdcParams {
  readonly min: number;
  readonly avg: number;
  readonly max: number;
}

export class FastCdc {
  readonly params: CdcParams;
  readonly #gear: Uint32Array;
  readonly #maskS: number;
  readonly #maskL: number;

  /** gear: 256 random 32-bit values (derived from the repository's chunk-ID key). */
  constructor(params: CdcParams, gear: Uint32Array) {
    if (gear.length !== 256) throw new RangeError("gear table must have 256 entries");
    if (!(params.min > 0 && params.min <= params.avg && params.avg <= params.max)) throw new RangeError("bad CDC limits");
    this.params = params;
    this.#gear = gear;
    const bits = Math.round(Math.log2(params.avg));
    this.#maskS = topMask(bits + 2);
    this.#maskL = topMask(bits - 2);
  }

  /**
   * Length of the next chunk of buf[start, end). When `final` is false and fewer than `max`
   * bytes are available, returns 0: the caller must supply more data first.
   */
  cut(buf: Uint8Array, start: number, end: number, final: boolean): number {
    const { min, avg, max } = this.params;
    let n = end - start;
    if (n <= 0) return 0;
    if (n < max && !final) return 0;
    if (n <= min) return n;
    if (n > max) n = max;
    const normal = n < avg ? n : avg;
    const gear = this.#gear;
    const maskS = this.#maskS;
    const maskL = this.#maskL;
    let fp = 0;
    let i = min;
    for (; i < normal; i++) {
      fp = ((fp << 1) + (gear[buf[start + i] as number] as number)) >>> 0;
      if ((fp & maskS) === 0) return i + 1;
    }
    for (; i < n; i++) {
      fp = ((fp << 1) + (gear[buf[start + i] as number] as number)) >>> 0;
      if ((fp & maskL) === 0) return i + 1;
    }
    return n;
  }
}

/** A mask of the top `bits` bits of a 32-bit word (high bits depend on the most bytes). */
function topMask(bits: number): number {
  const b = Math.max(1, Math.min(31, bits));
  return (0xffffffff << (32 - b)) >>> 0;
}

import { FormatError } from "./codec.js";
import { fromBase64, fromHex } from "../util/bytes.js";

/** Small, strict readers for JSON metadata: a wrong type is a FormatError naming the field. */
export type Json = Record<string, unknown>;

export function obj(value: unknown, what = "object"): Json {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new FormatError(`${what} is not an object`);
  return value as Json;
}

export function str(o: Json, key: string): string {
  const v = o[key];
  if (typeof v !== "string") throw new FormatError(`field ${key} is not a string`);
  return v;
}

export function optStr(o: Json, key: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new FormatError(`field ${key} is not a string`);
  return v;
}

export function num(o: Json, key: string): number {
  const v = o[key];
  if (typeof v !== "number" || !Number.isFinite(v)) throw new FormatError(`field ${key} is not a number`);
  return v;
}

export function int(o: Json, key: string): number {
  const v = num(o, key);
  if (!Number.isSafeInteger(v) || v < 0) throw new FormatError(`field ${key} is not a non-negative integer`);
  return v;
}

/** An integer within [min, max], negative values allowed. */
export function intIn(o: Json, key: string, min: number, max: number): number {
  const v = num(o, key);
  if (!Number.isSafeInteger(v) || v < min || v > max) throw new FormatError(`field ${key} is not an integer from ${min} to ${max}`);
  return v;
}

export function optInt(o: Json, key: string): number | undefined {
  return o[key] === undefined || o[key] === null ? undefined : int(o, key);
}

export function bool(o: Json, key: string): boolean {
  const v = o[key];
  if (typeof v !== "boolean") throw new FormatError(`field ${key} is not a boolean`);
  return v;
}

export function arr(o: Json, key: string): unknown[] {
  const v = o[key];
  if (!Array.isArray(v)) throw new FormatError(`field ${key} is not an array`);
  return v;
}

export function hexField(o: Json, key: string, length?: number): Uint8Array {
  const s = str(o, key);
  let b: Uint8Array;
  try {
    b = fromHex(s);
  } catch {
    throw new FormatError(`field ${key} is not hex`);
  }
  if (length !== undefined && b.length !== length) throw new FormatError(`field ${key} has the wrong length`);
  return b;
}

export function b64Field(o: Json, key: string, length?: number): Uint8Array {
  const s = str(o, key);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new FormatError(`field ${key} is not base64`);
  const b = fromBase64(s);
  if (length !== undefined && b.length !== length) throw new FormatError(`field ${key} has the wrong length`);
  return b;
}

export function oneOf<T extends string>(o: Json, key: string, values: readonly T[]): T {
  const v = str(o, key);
  if (!(values as readonly string[]).includes(v)) throw new FormatError(`field ${key} has an unknown value`);
  return v as T;
}

/*
 * The pipeline's batch tasks in native code on threads of their own: chunk IDs and zero chunks
 * of a batch (scanChunks), compress and encrypt new chunks into blobs (sealChunks),
 * authenticate, decrypt, decompress and verify stored blobs (openChunks), and seal verified blobs
 * again under another session key (rewrapChunks: prune's repack, re-encryption). Each does exactly
 * what src/pipeline/tasks.ts does with libsodium and the lz4 package, byte for byte: keyed
 * BLAKE2b-256 and XChaCha20-Poly1305 through the OpenSSL inside Node.js (native/aead.c), LZ4
 * through the same liblz4 sources the lz4 package builds (native/lz4-block.c). A batch runs without
 * JavaScript between its chunks and outside V8's heap; the caller must not touch the arrays it
 * passed until the promise settles (references keep them alive). The threads are the helper's
 * (native/task-threads.c), not libuv's, so file reads and writes never wait behind a batch: each
 * call says how many threads may run batches at once (more are started up to that number, never
 * stopped; tasks beyond it wait in a queue), and a finished batch is handed back to its
 * JavaScript thread through a thread-safe function. Each thread keeps its own OpenSSL contexts
 * and scratch memory; the keys in the contexts are replaced by zeros after every batch.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include "native.h"
#include "task.h"

int vmvault_lz4_compress(const char *src, char *dst, int srcSize, int dstCapacity);
int vmvault_lz4_decompress(const char *src, char *dst, int compressedSize, int dstCapacity);
int vmvault_lz4_bound(int size);

enum { NONCE = 24, TAG = 16, ID = 32, KEY = 32, OVERHEAD = NONCE + 1 + TAG, AD = 4 + ID };
enum { CODEC_RAW = 0, CODEC_ZSTD = 1, CODEC_LZ4 = 2 };
/* BlobStatus of src/pack/blob.ts, and one more: a codec only JavaScript decodes (zstd). */
enum { OK = 0, AUTH = 1, DECOMPRESS = 2, CODEC = 3, LENGTH = 4, MISMATCH = 5, ELSEWHERE = 255 };
enum { SCAN, SEAL, OPEN, REWRAP };


/* One task thread's contexts and scratch memory, made on its first task and kept. */
static __thread struct {
  vmvault_aead_ctx *aead;
  void *mac;
  unsigned char *scratch;
  size_t scratch_size;
  unsigned char *plain;
  size_t plain_size;
} here;

static int grow(unsigned char **buf, size_t *size, size_t n) {
  if (*size >= n) return 1;
  size_t want = n > 2 * *size ? n : 2 * *size;
  unsigned char *p = realloc(*buf, want);
  if (p == NULL) return 0;
  *buf = p;
  *size = want;
  return 1;
}

static int thread_ready(void) {
  if (here.aead == NULL) here.aead = vmvault_aead_new();
  if (here.mac == NULL) here.mac = vmvault_blake2b_new();
  return here.aead != NULL && here.mac != NULL;
}

static int all_zero(const unsigned char *p, size_t n) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t w[8];
    memcpy(w, p + i, 64);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return 0;
  }
  unsigned char acc = 0;
  for (; i < n; i++) acc |= p[i];
  return acc == 0;
}

static void blob_ad(unsigned char *ad, const unsigned char *id) {
  memcpy(ad, "blob", 4);
  memcpy(ad + 4, id, ID);
}

static int scan(task *t) {
  vmvault_id_group g;
  g.n = 0;
  for (size_t i = 0; i < t->count; i++) {
    const unsigned char *chunk = t->data.p + t->table[2 * i];
    size_t length = t->table[2 * i + 1];
    unsigned char *id = t->ids.p + i * ID;
    if (t->detect_zero && all_zero(chunk, length)) {
      t->zero.p[i] = 1;
      memset(id, 0, ID);
    } else if (vmvault_ids_add(&g, here.mac, t->key.p, chunk, length, id) != 0) return -1;
  }
  return vmvault_ids_flush(&g, here.mac, t->key.p);
}

/*
 * nonce | XChaCha20-Poly1305(codec | payload) with "blob" | ID as associated data, LZ4 kept only
 * when it saves at least 1/32 of the chunk (sealBlobInto). LZ4 always gets room for its bound, so
 * its output is the one the lz4 package gives; where the blob's own room is short of it (the
 * batch's last blob), it writes to scratch memory first.
 */
static int seal(task *t) {
  size_t at = 0;
  unsigned char ad[AD];
  for (size_t i = 0; i < t->count; i++) {
    const unsigned char *chunk = t->data.p + t->table[2 * i];
    size_t length = t->table[2 * i + 1];
    unsigned char *blob = t->out.p + at;
    unsigned char *body = blob + NONCE;
    int bound = vmvault_lz4_bound((int)length);
    if (bound <= 0) return -1;
    size_t room = t->out.n - at - NONCE - 1;
    unsigned char *into = body + 1;
    if (room < (size_t)bound) {
      if (!grow(&here.scratch, &here.scratch_size, (size_t)bound)) return -1;
      into = here.scratch;
    }
    int n = vmvault_lz4_compress((const char *)chunk, (char *)into, (int)length, bound);
    if (n <= 0) return -1;
    size_t framed;
    if ((size_t)n + (length >> 5) < length) {
      body[0] = CODEC_LZ4;
      if (into != body + 1) memcpy(body + 1, into, (size_t)n);
      framed = 1 + (size_t)n;
    } else {
      body[0] = CODEC_RAW;
      memcpy(body + 1, chunk, length);
      framed = 1 + length;
    }
    memcpy(blob, t->nonces.p + i * NONCE, NONCE);
    blob_ad(ad, t->ids.p + i * ID);
    if (vmvault_xchacha(here.aead, 1, t->key.p, blob, body, framed, ad, AD, body) != 0) return -1;
    t->lengths[i] = (uint32_t)(NONCE + framed + TAG);
    at += NONCE + framed + TAG;
  }
  t->result = (double)at;
  return 0;
}

/* The most an LZ4 block of this many bytes can decode to (it expands at most 255 times), and no more than raw. */
static size_t lz4_room(size_t raw, size_t block) {
  return raw / 256 > block ? block * 256 : raw;
}

/*
 * openBlobInto for one blob up to its ID check: OK once its plaintext (raw bytes) is in *plain,
 * else its status, or -1 (out of memory). *plain has room for the smaller of raw and 256 times
 * the stored length, or is NULL: then the thread's plaintext memory, grown once the blob is
 * authenticated. The decoder is given no more than the block can decode to (LZ4 expands at most
 * 255 times), so a listing claiming more takes no memory for it, and its verdict is the one a
 * buffer of the full length would give (malformed, or too short).
 */
static int decode_one(task *t, const unsigned char *stored, size_t length, const unsigned char *id, unsigned char **plain, size_t raw, unsigned char *framed_to) {
  unsigned char ad[AD];
  if (length < OVERHEAD) return AUTH;
  size_t framed = length - NONCE - TAG;
  if (framed_to == NULL) {
    if (!grow(&here.scratch, &here.scratch_size, framed)) return -1;
    framed_to = here.scratch;
  }
  blob_ad(ad, id);
  if (vmvault_xchacha(here.aead, 0, t->key.p, stored, stored + NONCE, length - NONCE, ad, AD, framed_to) != 0) return AUTH;
  unsigned char codec = framed_to[0];
  if (codec == CODEC_LZ4 && (framed - 1 == 0 || framed - 1 > INT32_MAX || raw > INT32_MAX)) return DECOMPRESS;
  if (codec != CODEC_RAW && codec != CODEC_LZ4) return codec == CODEC_ZSTD ? ELSEWHERE : CODEC;
  if (codec == CODEC_RAW && framed - 1 != raw) return LENGTH;
  size_t room = codec == CODEC_LZ4 ? lz4_room(raw, framed) : raw;
  if (*plain == NULL) {
    if (!grow(&here.plain, &here.plain_size, room > 0 ? room : 1)) return -1;
    *plain = here.plain;
  }
  if (codec == CODEC_RAW) {
    memcpy(*plain, framed_to + 1, raw);
    return OK;
  }
  int n = vmvault_lz4_decompress((const char *)framed_to + 1, (char *)*plain, (int)(framed - 1), (int)room);
  if (n < 0) return DECOMPRESS;
  return (size_t)n == raw ? OK : LENGTH;
}

/* Room entry i's plaintext takes in the thread's memory (without keep), 0 where it cannot be read: see decode_one. */
static size_t room_for(const task *t, size_t i) {
  size_t offset = t->table[3 * i], length = t->table[3 * i + 1], raw = t->table[3 * i + 2];
  if (length < OVERHEAD || offset + length > t->data.n) return 0;
  return lz4_room(raw, length);
}

/* Whether the entries lie one after another in data's order without overlapping (a rewrap's new blobs then never spoil each other). */
static int entries_apart(const task *t) {
  size_t end = 0;
  for (size_t i = 0; i < t->count; i++) {
    size_t offset = t->table[3 * i], length = t->table[3 * i + 1];
    if (offset < end) return 0;
    end = offset + length;
  }
  return 1;
}

/*
 * A rewrap's verified blob i sealed again where its framed bytes were decrypted to, its old
 * place in out: nonce i, the new session key, bound to its ID under the new chunk-ID key (its own
 * ID without one). A blob that did not verify leaves zeros where its plaintext was, and no new ID.
 */
static int reseal(task *t, size_t i, int decrypted) {
  size_t offset = t->table[3 * i], length = t->table[3 * i + 1];
  unsigned char *blob = t->out.p + offset;
  if (t->status.p[i] != OK) {
    if (decrypted) memset(blob + NONCE, 0, length - NONCE - TAG);
    if (t->new_ids.p != NULL) memset(t->new_ids.p + i * ID, 0, ID);
    return 0;
  }
  unsigned char ad[AD];
  memcpy(blob, t->nonces.p + i * NONCE, NONCE);
  blob_ad(ad, t->new_ids.p != NULL ? t->new_ids.p + i * ID : t->ids.p + i * ID);
  return vmvault_xchacha(here.aead, 1, t->new_key.p, blob, blob + NONCE, length - NONCE - TAG, ad, AD, blob + NONCE);
}

/*
 * openBlobInto for each entry, in groups whose IDs are checked together (vmvault_ids_*): up to a
 * group of entries, and without keep up to OPEN_GROUP bytes of plaintext in the thread's memory,
 * taken before the group decodes; an entry that needs more is a group of its own, its memory
 * taken once it is authenticated. The plaintexts (with keep) go to out at their offsets, which
 * must not overlap; zeros where a blob failed. A rewrap decrypts each blob's framed bytes into
 * its own place in out, hashes its plaintext under the new chunk-ID key too where there is one,
 * and seals the framed bytes again there once its ID is checked (rewrapBlob); entries that are
 * out of order or overlap (only a hostile listing has them) are left to JavaScript.
 */
enum { OPEN_GROUP = 1 << 20 };
static int open_all(task *t) {
  int rewrap = t->kind == REWRAP;
  if (rewrap && !entries_apart(t)) {
    t->result = 1;
    return 0;
  }
  int elsewhere = 0;
  unsigned char checks[VMVAULT_ID_GROUP][ID];
  vmvault_id_group g, renamed;
  g.n = 0;
  renamed.n = 0;
  for (size_t first = 0, end; first < t->count; first = end) {
    /* Each entry's place in the thread's plaintext memory (without keep). */
    size_t held = 0, place[VMVAULT_ID_GROUP];
    for (end = first; end < t->count && end - first < VMVAULT_ID_GROUP; end++) {
      size_t room = t->out_offsets != NULL ? 0 : room_for(t, end);
      if (end > first && held + room > OPEN_GROUP) break;
      place[end - first] = held;
      held += room;
    }
    int alone = held > OPEN_GROUP;
    if (t->out_offsets == NULL && !alone && !grow(&here.plain, &here.plain_size, held > 0 ? held : 1)) return -1;
    unsigned char decrypted[VMVAULT_ID_GROUP];
    for (size_t i = first; i < end; i++) {
      size_t offset = t->table[3 * i], length = t->table[3 * i + 1], raw = t->table[3 * i + 2];
      unsigned char *plain = t->out_offsets != NULL ? t->out.p + t->out_offsets[i] : alone ? NULL : here.plain + place[i - first];
      int inside = offset + length <= t->data.n;
      decrypted[i - first] = (unsigned char)(rewrap && inside && length >= OVERHEAD);
      unsigned char *framed_to = decrypted[i - first] ? t->out.p + offset + NONCE : NULL;
      int s = !inside ? LENGTH : decode_one(t, t->data.p + offset, length, t->ids.p + i * ID, &plain, raw, framed_to);
      if (s < 0) return -1;
      if (s == OK && vmvault_ids_add(&g, here.mac, t->id_key.p, plain, raw, checks[i - first]) != 0) return -1;
      if (s == OK && t->new_id_key.p != NULL && vmvault_ids_add(&renamed, here.mac, t->new_id_key.p, plain, raw, t->new_ids.p + i * ID) != 0) return -1;
      if (s == ELSEWHERE) elsewhere = 1;
      t->status.p[i] = (unsigned char)s;
    }
    if (vmvault_ids_flush(&g, here.mac, t->id_key.p) != 0) return -1;
    if (t->new_id_key.p != NULL && vmvault_ids_flush(&renamed, here.mac, t->new_id_key.p) != 0) return -1;
    for (size_t i = first; i < end; i++) {
      if (t->status.p[i] == OK && !vmvault_equal32(checks[i - first], t->ids.p + i * ID)) t->status.p[i] = MISMATCH;
      /* Unauthenticated or unverified bytes never reach the caller. */
      if (t->status.p[i] != OK && t->out_offsets != NULL) memset(t->out.p + t->out_offsets[i], 0, t->table[3 * i + 2]);
      if (rewrap && reseal(t, i, decrypted[i - first]) != 0) return -1;
    }
  }
  t->result = elsewhere;
  return 0;
}

void vmvault_task_execute(task *t) {
  if (!thread_ready()) {
    t->failed = 1;
    return;
  }
  int rc = t->kind == SCAN ? scan(t) : t->kind == SEAL ? seal(t) : open_all(t);
  t->failed = rc != 0;
  vmvault_aead_scrub(here.aead);
  vmvault_blake2b_scrub(here.mac);
  if (here.scratch != NULL) vmvault_cleanse(here.scratch, here.scratch_size);
  if (here.plain != NULL) vmvault_cleanse(here.plain, here.plain_size);
}

#define U8 napi_uint8_array
#define U32 napi_uint32_array
#define ARG(i, type, field, nullable) vmvault_task_arg(env, t, argv[i], type, (void **)&t->field.p, &t->field.n, nullable)

/* Every pair (offset, length) of a table of count rows lies inside data; each length fits an int. */
static int ranges_fit(const uint32_t *table, size_t count, size_t limit) {
  for (size_t i = 0; i < count; i++)
    if ((size_t)table[2 * i] + table[2 * i + 1] > limit || table[2 * i + 1] > INT32_MAX / 2) return 0;
  return 1;
}

/* scanChunks(data, ranges, key, detectZero, ids, zero, threads) -> Promise<0> */
static napi_value scan_chunks(napi_env env, napi_callback_info info) {
  static const char usage[] = "expected data, ranges, key, detectZero, ids, zero, threads";
  napi_value argv[7];
  task *t = vmvault_task_begin(env, info, SCAN, 7, argv, usage);
  bytes table;
  bool detect = false;
  if (t == NULL) return NULL;
  if (!ARG(0, U8, data, 0) || !vmvault_task_arg(env, t, argv[1], U32, (void **)&table.p, &table.n, 0) || !ARG(2, U8, key, 0) || napi_get_value_bool(env, argv[3], &detect) != napi_ok ||
      !ARG(4, U8, ids, 0) || !ARG(5, U8, zero, 0))
    return vmvault_task_fail(env, t, usage, 0);
  t->table = (const uint32_t *)table.p;
  t->count = table.n / 2;
  t->detect_zero = detect;
  if (table.n % 2 != 0 || t->key.n != KEY || t->ids.n < t->count * ID || t->zero.n < t->count || !ranges_fit(t->table, t->count, t->data.n))
    return vmvault_task_fail(env, t, "bad ranges, key, ids or zero length", 1);
  memset(t->zero.p, 0, t->count);
  return vmvault_task_queue(env, t, argv[6]);
}

/* sealChunks(data, ranges, ids, nonces, key, out, lengths, threads) -> Promise<bytes written to out> */
static napi_value seal_chunks(napi_env env, napi_callback_info info) {
  static const char usage[] = "expected data, ranges, ids, nonces, key, out, lengths, threads";
  napi_value argv[8];
  task *t = vmvault_task_begin(env, info, SEAL, 8, argv, usage);
  bytes table, lengths;
  if (t == NULL) return NULL;
  if (!ARG(0, U8, data, 0) || !vmvault_task_arg(env, t, argv[1], U32, (void **)&table.p, &table.n, 0) || !ARG(2, U8, ids, 0) || !ARG(3, U8, nonces, 0) || !ARG(4, U8, key, 0) ||
      !ARG(5, U8, out, 0) || !vmvault_task_arg(env, t, argv[6], U32, (void **)&lengths.p, &lengths.n, 0))
    return vmvault_task_fail(env, t, usage, 0);
  t->table = (const uint32_t *)table.p;
  t->count = table.n / 2;
  t->lengths = (uint32_t *)lengths.p;
  size_t need = 0;
  for (size_t i = 0; i < t->count; i++) need += (size_t)t->table[2 * i + 1] + OVERHEAD;
  if (table.n % 2 != 0 || t->key.n != KEY || t->ids.n < t->count * ID || t->nonces.n < t->count * NONCE || lengths.n < t->count || t->out.n < need ||
      !ranges_fit(t->table, t->count, t->data.n))
    return vmvault_task_fail(env, t, "bad ranges, ids, nonces, key, out or lengths length", 1);
  return vmvault_task_queue(env, t, argv[7]);
}

/* openChunks(data, entries, ids, key, idKey, out | null, outOffsets | null, status, threads) -> Promise<1 when an entry needs a codec only JavaScript has, else 0> */
static napi_value open_chunks(napi_env env, napi_callback_info info) {
  static const char usage[] = "expected data, entries, ids, key, idKey, out, outOffsets, status, threads";
  napi_value argv[9];
  task *t = vmvault_task_begin(env, info, OPEN, 9, argv, usage);
  bytes table, offsets;
  if (t == NULL) return NULL;
  if (!ARG(0, U8, data, 0) || !vmvault_task_arg(env, t, argv[1], U32, (void **)&table.p, &table.n, 0) || !ARG(2, U8, ids, 0) || !ARG(3, U8, key, 0) || !ARG(4, U8, id_key, 0) ||
      !ARG(5, U8, out, 1) || !vmvault_task_arg(env, t, argv[6], U32, (void **)&offsets.p, &offsets.n, 1) || !ARG(7, U8, status, 0))
    return vmvault_task_fail(env, t, usage, 0);
  t->table = (const uint32_t *)table.p;
  t->count = table.n / 3;
  t->out_offsets = (const uint32_t *)offsets.p;
  if ((t->out_offsets == NULL) != (t->out.p == NULL)) return vmvault_task_fail(env, t, "give out and outOffsets together", 0);
  if (table.n % 3 != 0 || t->key.n != KEY || t->id_key.n != KEY || t->ids.n < t->count * ID || t->status.n < t->count)
    return vmvault_task_fail(env, t, "bad entries, ids, key, idKey or status length", 1);
  if (t->out_offsets != NULL) {
    if (offsets.n < t->count) return vmvault_task_fail(env, t, "bad outOffsets length", 1);
    for (size_t i = 0; i < t->count; i++)
      if ((size_t)t->out_offsets[i] + t->table[3 * i + 2] > t->out.n) return vmvault_task_fail(env, t, "placed plaintexts do not fit the output buffer", 1);
  }
  return vmvault_task_queue(env, t, argv[8]);
}

/* rewrapChunks(data, entries, ids, key, idKey, newKey, newIdKey | null, nonces, out, status, newIds | null, threads) -> Promise<1 when an entry needs JavaScript (a zstd blob, entries out of order), else 0> */
static napi_value rewrap_chunks(napi_env env, napi_callback_info info) {
  static const char usage[] = "expected data, entries, ids, key, idKey, newKey, newIdKey, nonces, out, status, newIds, threads";
  napi_value argv[12];
  task *t = vmvault_task_begin(env, info, REWRAP, 12, argv, usage);
  bytes table;
  if (t == NULL) return NULL;
  if (!ARG(0, U8, data, 0) || !vmvault_task_arg(env, t, argv[1], U32, (void **)&table.p, &table.n, 0) || !ARG(2, U8, ids, 0) || !ARG(3, U8, key, 0) || !ARG(4, U8, id_key, 0) ||
      !ARG(5, U8, new_key, 0) || !ARG(6, U8, new_id_key, 1) || !ARG(7, U8, nonces, 0) || !ARG(8, U8, out, 0) || !ARG(9, U8, status, 0) || !ARG(10, U8, new_ids, 1))
    return vmvault_task_fail(env, t, usage, 0);
  t->table = (const uint32_t *)table.p;
  t->count = table.n / 3;
  if ((t->new_id_key.p == NULL) != (t->new_ids.p == NULL)) return vmvault_task_fail(env, t, "give newIdKey and newIds together", 0);
  if (table.n % 3 != 0 || t->key.n != KEY || t->id_key.n != KEY || t->new_key.n != KEY || (t->new_id_key.p != NULL && (t->new_id_key.n != KEY || t->new_ids.n < t->count * ID)) ||
      t->ids.n < t->count * ID || t->nonces.n < t->count * NONCE || t->status.n < t->count || t->out.n < t->data.n)
    return vmvault_task_fail(env, t, "bad entries, ids, keys, nonces, out, status or newIds length", 1);
  return vmvault_task_queue(env, t, argv[11]);
}

static const vmvault_lazy_export exported[] = {
    {"scanChunks", scan_chunks, vmvault_ossl_mac, NULL, NULL}, {"sealChunks", seal_chunks, vmvault_ossl_mac, NULL, NULL}, {"openChunks", open_chunks, vmvault_ossl_mac, NULL, NULL},
    {"rewrapChunks", rewrap_chunks, vmvault_ossl_mac, NULL, NULL}};

napi_status vmvault_register_tasks(napi_env env, napi_value exports) {
  napi_status s = napi_ok;
  for (size_t i = 0; i < sizeof exported / sizeof exported[0] && s == napi_ok; i++) s = vmvault_export_lazy(env, exports, &exported[i]);
  return s;
}

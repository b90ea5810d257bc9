/* vmvault's native helper: one module, built by `npm install` (binding.gyp). */
#ifndef VMVAULT_NATIVE_H
#define VMVAULT_NATIVE_H
#include <errno.h>
#include <node_api.h>

/* The errno name an Error's code carries, as Node.js's fs errors have it; EIO for any other. */
static inline const char *vmvault_errno_name(int e) {
  switch (e) {
    case ENOENT: return "ENOENT";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ELOOP: return "ELOOP";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOMEM: return "ENOMEM";
    case EFBIG: return "EFBIG";
    case EOVERFLOW: return "EOVERFLOW";
    case EINVAL: return "EINVAL";
    case ESTALE: return "ESTALE";
    case EBADF: return "EBADF";
    case ENXIO: return "ENXIO";
    case ESPIPE: return "ESPIPE";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EROFS: return "EROFS";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case EMLINK: return "EMLINK";
    case ENOTEMPTY: return "ENOTEMPTY";
    case ENODATA: return "ENODATA";
    case E2BIG: return "E2BIG";
    case ERANGE: return "ERANGE";
    case EFAULT: return "EFAULT";
#ifdef ENOTSUP
    case ENOTSUP: return "ENOTSUP";
#endif
    default: return "EIO";
  }
}

/*
 * native/writefile.c, for every file of the helper: an Error as Node.js's fs makes them (code the
 * errno name, syscall, and a message naming the path where one is given), and a path argument
 * given as a Buffer as a new NUL-terminated string (NULL with a TypeError thrown for an empty,
 * over-long or NUL-holding one; free it).
 */
napi_value vmvault_errno_error(napi_env env, int e, const char *syscall, const char *path);
char *vmvault_buffer_path(napi_env env, napi_value value);

/* The call's one argument, a Uint8Array: its bytes and length, and 1; 0 with a TypeError thrown otherwise. */
static inline int vmvault_bytes_argument(napi_env env, napi_callback_info info, void **data, size_t *length) {
  size_t argc = 1;
  napi_value argv[1];
  napi_typedarray_type type;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_typedarray_info(env, argv[0], &type, length, data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "expected a Uint8Array");
    return 0;
  }
  return 1;
}

/* Sets exports[name] to a new function calling cb. */
static inline napi_status vmvault_export(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  napi_status s = napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  return s == napi_ok ? napi_set_named_property(env, exports, name, fn) : s;
}

/*
 * exports[name] as a getter, for functions that need what the helper looks up in the process on
 * first use (OpenSSL's functions and algorithms, native/aead.c): the function where ready() says
 * that is there, else undefined. ready() runs on the first access, not when the helper loads:
 * every command loads the helper before its unlock, the peak of its memory, and the look-ups
 * read pages of Node.js's symbol tables and OpenSSL's algorithm tables (0.3 MiB) that it need not
 * hold then (docs/design.md §10). Each access makes a new function object; where make is given,
 * with data of its own (make(): NULL when it cannot), which drop frees once the function is
 * collected or its thread's environment ends (before Node.js may unload the helper, so never
 * at the thread's exit).
 */
typedef struct {
  const char *name;
  napi_callback cb;
  int (*ready)(void);
  void *(*make)(void);
  void (*drop)(void *);
} vmvault_lazy_export;

static inline void vmvault_lazy_drop(node_api_basic_env env, void *data, void *hint) {
  (void)env;
  ((const vmvault_lazy_export *)hint)->drop(data);
}

static inline napi_value vmvault_lazy_get(napi_env env, napi_callback_info info) {
  const vmvault_lazy_export *e = NULL;
  napi_value fn;
  if (napi_get_cb_info(env, info, NULL, NULL, NULL, (void **)&e) != napi_ok || e == NULL) return NULL;
  if (!e->ready()) return napi_get_undefined(env, &fn) == napi_ok ? fn : NULL;
  void *data = NULL;
  if (e->make != NULL && (data = e->make()) == NULL) {
    napi_throw_error(env, NULL, "the helper could not set up what the function needs");
    return NULL;
  }
  if (napi_create_function(env, e->name, NAPI_AUTO_LENGTH, e->cb, data, &fn) != napi_ok) {
    if (data != NULL) e->drop(data);
    return NULL;
  }
  if (data != NULL && napi_add_finalizer(env, fn, data, vmvault_lazy_drop, (void *)e, NULL) != napi_ok) {
    e->drop(data);
    return NULL;
  }
  return fn;
}

static inline napi_status vmvault_export_lazy(napi_env env, napi_value exports, const vmvault_lazy_export *e) {
  napi_property_descriptor d = {e->name, NULL, NULL, vmvault_lazy_get, NULL, NULL, napi_enumerable, (void *)e};
  return napi_define_properties(env, exports, 1, &d);
}

/* native/readfile.c: readFile(path) and readRange(path, offset, length) -> Promise<ArrayBuffer>, one trip to the thread pool each. */
napi_status vmvault_register_readfile(napi_env env, napi_value exports);

/* native/writefile.c: writeFileWhole(...) -> Promise<void>: a small restored file created, written, finished and renamed into place in one trip to the thread pool. */
napi_status vmvault_register_writefile(napi_env env, napi_value exports);

/* native/memory.c: adviseHugePages(view) -> bytes advised (madvise MADV_HUGEPAGE). */
napi_status vmvault_register_memory(napi_env env, napi_value exports);

/* native/pagecache.c: cacheResidency(fd, offset, length) (mincore) and dropCache(fd, offset, length) (POSIX_FADV_DONTNEED). */
napi_status vmvault_register_pagecache(napi_env env, napi_value exports);

/* native/xattr.c: listXattrs(path, follow) and setXattrs(fdOrPath, packed): extended attributes. */
napi_status vmvault_register_xattr(napi_env env, napi_value exports);

/*
 * For a reader on a pool thread (readRange): which pages of [offset, offset + length), rounded out
 * to whole pages, the page cache holds (a malloc'd vector of *pages bytes from *base; NULL where
 * unknown or the range is over 64 MiB), and afterwards dropping the runs that were not held
 * (freeing the vector; nothing for NULL).
 */
#include <stddef.h>
#include <stdint.h>
unsigned char *vmvault_cache_before(int fd, int64_t offset, size_t length, int64_t *base, size_t *pages);
void vmvault_cache_restore(int fd, int64_t base, unsigned char *before, size_t pages);

/*
 * Packed extended attributes (native/xattr.c): 0 when packed[0..length) is well formed, with
 * *count attributes; -1 otherwise. vmvault_apply_xattrs sets them on fd (or, when fd is -1, on
 * path without following a symlink) and stores each one's errno (0: set) in errors; it stops and
 * returns the errno of a failure that is not about the attribute (vmvault_xattr_fatal: a
 * read-only or failing file system), else 0.
 */
#include <stdbool.h>
int vmvault_check_xattrs(const unsigned char *packed, size_t length, size_t *count);
int vmvault_apply_xattrs(int fd, const char *path, const unsigned char *packed, size_t length, int *errors);
bool vmvault_xattr_fatal(int e);
/* The answers of vmvault_apply_xattrs as JavaScript has them: one string per attribute, "" where set, else the errno name. */
napi_value vmvault_xattr_answers(napi_env env, const int *errors, size_t count);

/* native/aead.c: xchachaEncrypt / xchachaDecrypt(key, nonce, input, ad, out) through the OpenSSL in Node.js, when it has one. */
napi_status vmvault_register_aead(napi_env env, napi_value exports);

/*
 * The same OpenSSL for other files of the helper (native/tasks.c). vmvault_ossl_aead/_mac: whether
 * the functions are there (looked up once per process). A context per thread: vmvault_aead_new
 * (NULL without them), vmvault_xchacha (0, or -1: failure or, decrypting, a tag that does not
 * match; out zeroed then), vmvault_aead_scrub (replaces the last key in the context by zeros).
 * vmvault_blake2b: keyed BLAKE2b-256 (32-byte key) through OpenSSL's BLAKE2BMAC, 0 on success.
 * vmvault_equal32: constant-time comparison of 32 bytes (CRYPTO_memcmp).
 */
typedef struct vmvault_aead_ctx vmvault_aead_ctx;
int vmvault_ossl_aead(void);
int vmvault_ossl_mac(void);
vmvault_aead_ctx *vmvault_aead_new(void);
void vmvault_aead_free(vmvault_aead_ctx *c);
void vmvault_aead_scrub(vmvault_aead_ctx *c);
int vmvault_xchacha(vmvault_aead_ctx *c, int enc, const unsigned char *key, const unsigned char *nonce, const unsigned char *in, size_t inlen,
                    const unsigned char *ad, size_t adlen, unsigned char *out);
void *vmvault_blake2b_new(void);
void vmvault_blake2b_free(void *m);
void vmvault_blake2b_scrub(void *m);
int vmvault_blake2b(void *m, const unsigned char *key, const unsigned char *in, size_t inlen, unsigned char *out);
int vmvault_equal32(const unsigned char *a, const unsigned char *b);
void vmvault_cleanse(void *p, size_t n);

/*
 * native/ids.c: keyed BLAKE2b-256 (32-byte key) of groups of chunks, many at once where the
 * optional library is there (else one by one, vmvault_blake2b through mac). vmvault_ids_add
 * queues one (its ID goes to `to`; in must stay readable until the flush) and hashes the group
 * when it is full; vmvault_ids_flush hashes what is queued. 0, or -1 on failure.
 */
#define VMVAULT_ID_GROUP 32
typedef struct {
  size_t n;
  const unsigned char *in[VMVAULT_ID_GROUP];
  size_t length[VMVAULT_ID_GROUP];
  unsigned char *to[VMVAULT_ID_GROUP];
} vmvault_id_group;
int vmvault_ids_add(vmvault_id_group *g, void *mac, const unsigned char *key, const unsigned char *in, size_t length, unsigned char *to);
int vmvault_ids_flush(vmvault_id_group *g, void *mac, const unsigned char *key);
napi_status vmvault_register_ids(napi_env env, napi_value exports);

/*
 * native/sha256.c: sha256(bytes), a Buffer, through the OpenSSL in Node.js, when it has one.
 * vmvault_sha256: the same into out[32], 1 on success, 0 without OpenSSL's functions (with out
 * NULL: only whether they are there).
 */
napi_status vmvault_register_sha256(napi_env env, napi_value exports);
int vmvault_sha256(const void *data, size_t length, unsigned char *out);

/* native/source.c: mapSource(path) -> { source, sha256 }: an ASCII file as a string over a read-only mapping of it. */
napi_status vmvault_register_source(napi_env env, napi_value exports);

/* native/tasks.c: scanChunks, sealChunks, openChunks, rewrapChunks: the pipeline's batch tasks on the helper's threads (native/task-threads.c; when OpenSSL has what they need). */
napi_status vmvault_register_tasks(napi_env env, napi_value exports);

#endif

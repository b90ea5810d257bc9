/*
 * mapSource(path) -> { source, sha256 }: a script's source as a V8 string over a read-only
 * mapping of its file, and the SHA-256 of its bytes, for the code-cache loader
 * (src/util/code-cache.ts). V8 keeps a script's source for as long as its functions may still be
 * compiled: read into the heap, the CLI bundle's 1.2 MB sat there through Argon2id, every
 * command's peak. Over a mapping, only the pages V8 reads again (the functions the code cache
 * does not hold, when first called) come back into memory; the pages the hash read are let go
 * right after it (MADV_DONTNEED: the file's pages stay in the page cache, not in this process).
 * The file must hold ASCII only (Latin-1 is what V8 is given) and must not change while it is
 * mapped: the build writes such files under a new name and renames them into place, so a running
 * command keeps the file it mapped. Throws (an Error with the errno name as its code, or
 * "ENOTASCII") rather than return anything else; the loader then reads the file as before.
 * Node-API's external strings are experimental in Node.js 20 (declared under NAPI_EXPERIMENTAL);
 * only this file asks for them, and the module registers at the stable version (extents.c).
 */
#define NAPI_EXPERIMENTAL
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <node_api.h>
#include "native.h"

static void unmap(node_api_basic_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

/* Whether every byte is below 0x80, eight at a time. */
static int ascii(const unsigned char *p, size_t n) {
  uint64_t acc = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    acc |= w;
  }
  for (; i < n; i++) acc |= p[i];
  return (acc & 0x8080808080808080ULL) == 0;
}

static napi_value map_source(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  char *path = argc < 1 ? NULL : vmvault_buffer_path(env, argv[0]);
  if (path == NULL) {
    if (argc < 1) napi_throw_type_error(env, NULL, "expected a path");
    return NULL;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    napi_throw(env, vmvault_errno_error(env, e, fd < 0 ? "open" : "fstat", path));
    free(path);
    return NULL;
  }
  size_t size = (size_t)st.st_size;
  void *p = size == 0 || !S_ISREG(st.st_mode) ? MAP_FAILED : mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    napi_throw(env, vmvault_errno_error(env, size == 0 || !S_ISREG(st.st_mode) ? EINVAL : e, "mmap", path));
    free(path);
    return NULL;
  }
  free(path);
  napi_value result, source, digest;
  void *out = NULL;
  if (!ascii(p, size)) {
    munmap(p, size);
    napi_throw_error(env, "ENOTASCII", "the file holds bytes outside ASCII");
    return NULL;
  }
  if (napi_create_buffer(env, 32, &out, &digest) != napi_ok || !vmvault_sha256(p, size, out)) {
    munmap(p, size);
    if (out != NULL) napi_throw_error(env, NULL, "OpenSSL's SHA-256 failed");
    return NULL;
  }
  madvise(p, size, MADV_DONTNEED);
  // Where V8 copies the bytes instead (it may for short strings), the finalizer has unmapped them already.
  bool copied = false;
  if (node_api_create_external_string_latin1(env, p, size, unmap, (void *)(uintptr_t)size, &source, &copied) != napi_ok) {
    munmap(p, size);
    return NULL;
  }
  if (napi_create_object(env, &result) != napi_ok || napi_set_named_property(env, result, "source", source) != napi_ok ||
      napi_set_named_property(env, result, "sha256", digest) != napi_ok)
    return NULL;
  return result;
}

napi_status vmvault_register_source(napi_env env, napi_value exports) {
  if (!vmvault_sha256(NULL, 0, NULL)) return napi_ok;
  return vmvault_export(env, exports, "mapSource", map_source);
}

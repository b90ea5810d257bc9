/*
 * vmvault's native helper, part one (part two, native/readfile.c, reads small files; part
 * three, native/memory.c, asks for huge pages behind the restore's output slots; part four,
 * native/pagecache.c, finds and drops what a backup brought into the page cache): where a
 * file's data and holes are (lseek SEEK_DATA and SEEK_HOLE), so a backup skips the unallocated
 * extents of a sparse disk image instead of reading them, and how large a block device is.
 * Node.js has no lseek; everything else stays in JavaScript.
 *
 *   seekData(fd, offset) -> the first data byte at or after offset, or -1 when none is left
 *   seekHole(fd, offset) -> the first hole byte at or after offset (the end of the file counts)
 *   seekEnd(fd)          -> the size of what fd reads (lseek SEEK_END): a block device's size,
 *                           which stat reports as 0
 *   punchHole(fd, offset, length)
 *                        -> fallocate(PUNCH_HOLE | KEEP_SIZE) over the range: 0, or the errno
 *                           (EOPNOTSUPP where the file system cannot), so a writable export's
 *                           writes file gives back the space of blocks its client trimmed
 *
 * Errors other than "no data left" (ENXIO) throw an Error whose code is the errno name.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <node_api.h>

#include "native.h"

static napi_value seek(napi_env env, napi_callback_info info, int whence) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  int64_t offset;
  napi_value result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &offset) != napi_ok || offset < 0) {
    napi_throw_type_error(env, NULL, "expected a file descriptor and a non-negative offset");
    return NULL;
  }
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
  off_t at = lseek(fd, (off_t)offset, whence == 0 ? SEEK_DATA : SEEK_HOLE);
  if (at < 0) {
    int e = errno;
    if (e == ENXIO && whence == 0) {
      napi_create_int64(env, -1, &result);
      return result;
    }
    napi_throw_error(env, vmvault_errno_name(e), strerror(e));
    return NULL;
  }
  napi_create_int64(env, (int64_t)at, &result);
  return result;
#else
  (void)fd;
  (void)whence;
  napi_throw_error(env, "ENOTSUP", "this system has no SEEK_DATA");
  return NULL;
#endif
}

static napi_value seek_end(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  napi_value result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected a file descriptor");
    return NULL;
  }
  off_t end = lseek(fd, 0, SEEK_END);
  if (end < 0) {
    int e = errno;
    napi_throw_error(env, vmvault_errno_name(e), strerror(e));
    return NULL;
  }
  napi_create_int64(env, (int64_t)end, &result);
  return result;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  int64_t offset, length;
  napi_value result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok || napi_get_value_int64(env, argv[2], &length) != napi_ok || fd < 0 || offset < 0 ||
      length < 0) {
    napi_throw_type_error(env, NULL, "expected a file descriptor, a non-negative offset and a non-negative length");
    return NULL;
  }
  int e = 0;
#if defined(FALLOC_FL_PUNCH_HOLE) && defined(FALLOC_FL_KEEP_SIZE)
  if (length > 0 && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) != 0) e = errno;
#else
  e = EOPNOTSUPP;
#endif
  napi_create_int32(env, e, &result);
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return seek(env, info, 0); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek(env, info, 1); }

NAPI_MODULE_INIT() {
  if (vmvault_export(env, exports, "seekData", seek_data) != napi_ok) return NULL;
  if (vmvault_export(env, exports, "seekHole", seek_hole) != napi_ok) return NULL;
  if (vmvault_export(env, exports, "seekEnd", seek_end) != napi_ok) return NULL;
  if (vmvault_export(env, exports, "punchHole", punch_hole) != napi_ok) return NULL;
  if (vmvault_register_readfile(env, exports) != napi_ok) return NULL;
  if (vmvault_register_writefile(env, exports) != napi_ok) return NULL;
  if (vmvault_register_memory(env, exports) != napi_ok) return NULL;
  if (vmvault_register_pagecache(env, exports) != napi_ok) return NULL;
  if (vmvault_register_xattr(env, exports) != napi_ok) return NULL;
  if (vmvault_register_aead(env, exports) != napi_ok) return NULL;
  if (vmvault_register_tasks(env, exports) != napi_ok) return NULL;
  if (vmvault_register_ids(env, exports) != napi_ok) return NULL;
  if (vmvault_register_sha256(env, exports) != napi_ok) return NULL;
  if (vmvault_register_source(env, exports) != napi_ok) return NULL;
  return exports;
}

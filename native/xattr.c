/*
 * Extended attributes (Node.js has no API for them): read for a backup, set for a restore.
 *
 *   listXattrs(path, follow) -> Buffer | null
 *       Every extended attribute of the file at path (a Buffer of its bytes; the last name is
 *       not followed unless follow), packed as below, or null when it has none or its file system
 *       keeps none. An attribute removed between the listing and its read is left out. Throws an
 *       Error whose code is the errno name and whose syscall names the call, as Node.js's fs does.
 *   setXattrs(target, packed) -> string[]
 *       Sets each packed attribute on target: a file descriptor (fsetxattr) or a path as a Buffer
 *       (lsetxattr: a symlink gets the attribute itself). One string per attribute: "" where it
 *       was set, else the errno name the kernel refused it with. A failure that is not about the
 *       attribute (a read-only or failing file system) throws as listXattrs does.
 *
 * Packed attributes: one after another, each its name's bytes, a NUL, its value's length as 4
 * bytes little-endian and the value. writefile.c applies the same packing through
 * vmvault_apply_xattrs, on its pool thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <node_api.h>

#include "native.h"

/* The kernel's limits (linux/limits.h): a name of up to 255 bytes, a value of up to 64 KiB. */
#define NAME_MAX_BYTES 255
#define VALUE_MAX_BYTES 65536

/* A value's length in the packing: 4 bytes, little-endian. */
static uint32_t get_length(const unsigned char *at) {
  return (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
}

static void put_length(unsigned char *at, uint32_t length) {
  at[0] = (unsigned char)length;
  at[1] = (unsigned char)(length >> 8);
  at[2] = (unsigned char)(length >> 16);
  at[3] = (unsigned char)(length >> 24);
}

/* ENOSPC is not among them: ext4 answers it for a value that does not fit beside the inode's others. */
bool vmvault_xattr_fatal(int e) {
  return e == EIO || e == EROFS || e == ENOMEM || e == EBADF || e == EFAULT;
}

int vmvault_check_xattrs(const unsigned char *packed, size_t length, size_t *count) {
  size_t at = 0, n = 0;
  while (at < length) {
    const unsigned char *nul = memchr(packed + at, 0, length - at);
    if (nul == NULL) return -1;
    size_t name_length = (size_t)(nul - (packed + at));
    if (name_length == 0 || name_length > NAME_MAX_BYTES) return -1;
    at += name_length + 1;
    if (length - at < 4) return -1;
    uint32_t value_length = get_length(packed + at);
    at += 4;
    if (value_length > VALUE_MAX_BYTES || length - at < value_length) return -1;
    at += value_length;
    n++;
  }
  *count = n;
  return 0;
}

int vmvault_apply_xattrs(int fd, const char *path, const unsigned char *packed, size_t length, int *errors) {
  size_t at = 0, i = 0;
  while (at < length) {
    const char *name = (const char *)packed + at;
    at += strlen(name) + 1;
    size_t value_length = get_length(packed + at);
    at += 4;
    int r = fd >= 0 ? fsetxattr(fd, name, packed + at, value_length, 0) : lsetxattr(path, name, packed + at, value_length, 0);
    int e = r == 0 ? 0 : errno;
    if (e != 0 && vmvault_xattr_fatal(e)) return e;
    errors[i++] = e;
    at += value_length;
  }
  return 0;
}

napi_value vmvault_xattr_answers(napi_env env, const int *errors, size_t count) {
  napi_value result;
  napi_create_array_with_length(env, count, &result);
  for (size_t i = 0; i < count; i++) {
    napi_value name;
    napi_create_string_utf8(env, errors[i] == 0 ? "" : vmvault_errno_name(errors[i]), NAPI_AUTO_LENGTH, &name);
    napi_set_element(env, result, (uint32_t)i, name);
  }
  return result;
}

/* Appends name NUL length value to *packed (grown as needed); false when out of memory. */
static bool append(unsigned char **packed, size_t *used, size_t *room, const char *name, const unsigned char *value, size_t value_length) {
  size_t name_length = strlen(name);
  size_t need = name_length + 1 + 4 + value_length;
  if (*used + need > *room) {
    size_t grown = (*used + need) * 2;
    unsigned char *bigger = realloc(*packed, grown);
    if (bigger == NULL) return false;
    *packed = bigger;
    *room = grown;
  }
  unsigned char *at = *packed + *used;
  memcpy(at, name, name_length + 1);
  at += name_length + 1;
  put_length(at, (uint32_t)value_length);
  memcpy(at + 4, value, value_length);
  *used += need;
  return true;
}

/*
 * Every attribute of path, packed into *packed (malloc'd; NULL and *used 0 where there are none
 * or the file system keeps none): 0, or the errno with *syscall naming the call that failed.
 */
static int read_xattrs(const char *path, bool follow, unsigned char **packed, size_t *used, const char **syscall) {
  *packed = NULL;
  *used = 0;
  *syscall = follow ? "listxattr" : "llistxattr";
  char *names = NULL;
  ssize_t names_length;
  /* The list may grow between asking its size and reading it: ask again. */
  for (int attempt = 0;; attempt++) {
    names_length = follow ? listxattr(path, NULL, 0) : llistxattr(path, NULL, 0);
    if (names_length < 0) return errno == ENOTSUP || errno == ENODATA ? 0 : errno;
    if (names_length == 0) return 0;
    free(names);
    names = malloc((size_t)names_length);
    if (names == NULL) return ENOMEM;
    ssize_t got = follow ? listxattr(path, names, (size_t)names_length) : llistxattr(path, names, (size_t)names_length);
    if (got >= 0) {
      names_length = got;
      break;
    }
    if (errno != ERANGE || attempt >= 8) {
      int e = errno;
      free(names);
      return e;
    }
  }
  size_t room = (size_t)names_length + 4096;
  unsigned char *value = malloc(VALUE_MAX_BYTES);
  *packed = malloc(room);
  int failed = *packed == NULL || value == NULL ? ENOMEM : 0;
  *syscall = follow ? "getxattr" : "lgetxattr";
  for (size_t at = 0; failed == 0 && at < (size_t)names_length; at += strlen(names + at) + 1) {
    const char *name = names + at;
    if (name[0] == 0 || strlen(name) > NAME_MAX_BYTES) continue;
    ssize_t value_length = follow ? getxattr(path, name, value, VALUE_MAX_BYTES) : lgetxattr(path, name, value, VALUE_MAX_BYTES);
    if (value_length < 0 && errno == ENODATA) continue; /* removed meanwhile */
    if (value_length < 0) failed = errno;
    else if (!append(packed, used, &room, name, value, (size_t)value_length)) failed = ENOMEM;
  }
  free(names);
  free(value);
  if (failed != 0 || *used == 0) {
    free(*packed);
    *packed = NULL;
    *used = 0;
  }
  return failed;
}

static napi_value list_xattrs(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  bool follow = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_bool(env, argv[1], &follow) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected a path and whether to follow a symlink");
    return NULL;
  }
  char *path = vmvault_buffer_path(env, argv[0]);
  if (path == NULL) return NULL;
  unsigned char *packed;
  size_t used;
  const char *syscall;
  int e = read_xattrs(path, follow, &packed, &used, &syscall);
  napi_value result = NULL;
  void *copy;
  if (e != 0) napi_throw(env, vmvault_errno_error(env, e, syscall, path));
  else if (used == 0) napi_get_null(env, &result);
  else if (napi_create_buffer_copy(env, used, packed, &copy, &result) != napi_ok) result = NULL;
  free(packed);
  free(path);
  return result;
}

static napi_value set_xattrs(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    napi_throw_type_error(env, NULL, "expected a file descriptor or path, and packed attributes");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length;
  void *bytes;
  size_t count = 0;
  if (napi_get_typedarray_info(env, argv[1], &type, &length, &bytes, NULL, NULL) != napi_ok || type != napi_uint8_array || vmvault_check_xattrs(bytes, length, &count) != 0) {
    napi_throw_type_error(env, NULL, "expected packed extended attributes as a Uint8Array");
    return NULL;
  }
  napi_valuetype target_type;
  napi_typeof(env, argv[0], &target_type);
  int32_t fd = -1;
  char *path = NULL;
  if (target_type == napi_number) {
    if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
      napi_throw_type_error(env, NULL, "expected a file descriptor");
      return NULL;
    }
  } else if ((path = vmvault_buffer_path(env, argv[0])) == NULL) {
    return NULL;
  }
  int *errors = calloc(count > 0 ? count : 1, sizeof *errors);
  int fatal = errors == NULL ? ENOMEM : vmvault_apply_xattrs(fd, path, bytes, length, errors);
  napi_value result = NULL;
  if (fatal != 0) napi_throw(env, vmvault_errno_error(env, fatal, fd >= 0 ? "fsetxattr" : "lsetxattr", path));
  else result = vmvault_xattr_answers(env, errors, count);
  free(errors);
  free(path);
  return result;
}

napi_status vmvault_register_xattr(napi_env env, napi_value exports) {
  napi_status s = vmvault_export(env, exports, "listXattrs", list_xattrs);
  return s == napi_ok ? vmvault_export(env, exports, "setXattrs", set_xattrs) : s;
}

/*
 * What of a file is in the kernel's page cache, and dropping what a reader brought in, so a
 * reader leaves the host's page cache as it found it (src/util/page-cache.ts).
 *
 *   cacheResidency(fd, offset, length) -> a Uint8Array, one byte per page of [offset, offset +
 *       length) (offset a multiple of the page size): 1 where the page is cached, 0 where not;
 *       null where the file cannot be mapped (a pipe, a file system without mmap) or mincore
 *       refuses. The kernel answers "cached" for every page of a file the caller may neither
 *       write nor owns (mincore's rule since Linux 5.0), so such a file's pages are never dropped.
 *   dropCache(fd, offset, length) -> 0, or the errno of posix_fadvise(POSIX_FADV_DONTNEED): the
 *       kernel drops the clean, unmapped cached pages of the range; dirty or mapped ones stay.
 *       A length of 0 drops nothing (not, as for posix_fadvise, everything to the end).
 *   pageSize -> the page size the answers count in.
 *
 * Mapping a file does not read it: mincore looks the pages up without touching them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <node_api.h>

#include "native.h"

/* A mapping's largest length: 64 MiB, 16,384 bytes of answer on 4 KiB pages. */
#define MAX_RESIDENCY_BYTES ((int64_t)64 * 1024 * 1024)

/*
 * Whether every page of the range is cached, asked with cachestat (Linux 6.5; the same number
 * on x86-64 and arm64): one count instead of a byte per page, for the common case of an image
 * read from a warm cache. 0 where it says otherwise or is missing: mincore then answers.
 */
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#include <sys/syscall.h>
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
static int all_cached(int fd, int64_t first, size_t pages, long page) {
  struct { uint64_t off, len; } range = {(uint64_t)first, (uint64_t)pages * (uint64_t)page};
  struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } stat;
  return syscall(__NR_cachestat, fd, &range, &stat, 0) == 0 && stat.nr_cache >= pages;
}
#else
static int all_cached(int fd, int64_t first, size_t pages, long page) {
  (void)fd, (void)first, (void)pages, (void)page;
  return 0;
}
#endif

/* mincore over pages [first, first + pages * page) of fd, mapped and never touched: 1 on success. */
static int page_residency(int fd, int64_t first, size_t pages, long page, unsigned char *vec) {
  if (all_cached(fd, first, pages, page)) {
    memset(vec, 1, pages);
    return 1;
  }
  void *map = mmap(NULL, pages * (size_t)page, PROT_READ, MAP_SHARED, fd, (off_t)first);
  if (map == MAP_FAILED) return 0;
  int ok = mincore(map, pages * (size_t)page, vec) == 0;
  munmap(map, pages * (size_t)page);
  for (size_t i = 0; ok && i < pages; i++) vec[i] &= 1;
  return ok;
}

unsigned char *vmvault_cache_before(int fd, int64_t offset, size_t length, int64_t *base, size_t *pages) {
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0 || offset < 0 || length == 0 || (int64_t)length > MAX_RESIDENCY_BYTES) return NULL;
  int64_t first = offset - offset % page;
  size_t n = (size_t)((offset + (int64_t)length - first + page - 1) / page);
  unsigned char *vec = malloc(n);
  if (vec == NULL) return NULL;
  if (!page_residency(fd, first, n, page, vec)) {
    free(vec);
    return NULL;
  }
  *base = first;
  *pages = n;
  return vec;
}

void vmvault_cache_restore(int fd, int64_t base, unsigned char *before, size_t pages) {
  if (before == NULL) return;
  long page = sysconf(_SC_PAGESIZE);
  for (size_t i = 0; i < pages;) {
    if (before[i]) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < pages && !before[j]) j++;
#ifdef POSIX_FADV_DONTNEED
    posix_fadvise(fd, (off_t)(base + (int64_t)i * page), (off_t)((j - i) * (size_t)page), POSIX_FADV_DONTNEED);
#endif
    i = j;
  }
  free(before);
}

static int read_range_args(napi_env env, napi_callback_info info, int32_t *fd, int64_t *offset, int64_t *length) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], offset) != napi_ok || napi_get_value_int64(env, argv[2], length) != napi_ok || *fd < 0 ||
      *offset < 0 || *length < 0) {
    napi_throw_type_error(env, NULL, "expected a file descriptor, a non-negative offset and a non-negative length");
    return 0;
  }
  return 1;
}

static napi_value cache_residency(napi_env env, napi_callback_info info) {
  int32_t fd;
  int64_t offset, length;
  napi_value result;
  if (!read_range_args(env, info, &fd, &offset, &length)) return NULL;
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0 || offset % page != 0 || length == 0 || length > MAX_RESIDENCY_BYTES) {
    napi_throw_range_error(env, NULL, "the offset must be a multiple of the page size and the length between 1 byte and 64 MiB");
    return NULL;
  }
  size_t pages = (size_t)((length + page - 1) / page);
  void *array_data = NULL;
  napi_value buffer;
  if (napi_create_arraybuffer(env, pages, &array_data, &buffer) != napi_ok) return NULL;
  if (!page_residency(fd, offset, pages, page, (unsigned char *)array_data)) {
    napi_get_null(env, &result);
    return result;
  }
  napi_create_typedarray(env, napi_uint8_array, pages, buffer, 0, &result);
  return result;
}

static napi_value drop_cache(napi_env env, napi_callback_info info) {
  int32_t fd;
  int64_t offset, length;
  napi_value result;
  if (!read_range_args(env, info, &fd, &offset, &length)) return NULL;
  int e = 0;
#ifdef POSIX_FADV_DONTNEED
  if (length > 0) e = posix_fadvise(fd, (off_t)offset, (off_t)length, POSIX_FADV_DONTNEED);
#else
  e = ENOTSUP;
#endif
  napi_create_int32(env, e, &result);
  return result;
}

napi_status vmvault_register_pagecache(napi_env env, napi_value exports) {
  napi_value page;
  napi_status s = napi_create_int32(env, (int32_t)sysconf(_SC_PAGESIZE), &page);
  if (s == napi_ok) s = napi_set_named_property(env, exports, "pageSize", page);
  if (s == napi_ok) s = vmvault_export(env, exports, "cacheResidency", cache_residency);
  if (s == napi_ok) s = vmvault_export(env, exports, "dropCache", drop_cache);
  return s;
}

/*
 * Reading a whole small file, or a range of one, in one trip to libuv's thread pool: open,
 * fstat, read and close run together on a pool thread, and the promise settles once on the main thread. Node.js's own
 * fs.readFile makes each of those four calls a separate trip (a hand-off to a pool thread and a
 * wake-up of the main thread each), which is most of what listing an old repository costs: its
 * snapshot headers, index files, session envelopes and audit records are thousands of small files.
 *
 *   readFile(path) -> Promise<ArrayBuffer>                    the file's bytes
 *   readRange(path, offset, length[, leaveCache]) -> Promise<ArrayBuffer>
 *                                                             up to length bytes from offset
 *                                                             (fewer where the file ends); with
 *                                                             leaveCache, without readahead and
 *                                                             with the pages it brought into the
 *                                                             page cache dropped again
 *   statSizes(paths) -> Promise<Float64Array>                 each file's size, -1 where stat
 *                                                             fails (a listing's sizes: one trip
 *                                                             for many files)
 *
 * A failure rejects with an Error whose code is the errno name (ENOENT, EISDIR, EACCES, ...)
 * and whose message names the path, as Node.js's fs errors do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <node_api.h>

#include "native.h"

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *path;
  /* A range read (readRange) or the whole file (readFile). */
  int ranged;
  /* Leave the page cache as found (readRange's leaveCache). */
  int leave_cache;
  int64_t offset;
  size_t length;
  unsigned char *data;
  size_t size;
  int err;
  /* The call that failed, for the message ("open", "fstat", "read"). */
  const char *op;
} read_job;

static void read_execute(napi_env env, void *arg) {
  (void)env;
  read_job *job = arg;
  int fd;
  do fd = open(job->path, O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    job->err = errno;
    job->op = "open";
    return;
  }
  /* Every failure after the open is reported as the read's, as Node.js's readFile does. */
  job->op = "read";
  struct stat st;
  if (fstat(fd, &st) != 0) {
    job->err = errno;
    job->op = "fstat";
  } else if (S_ISDIR(st.st_mode)) {
    job->err = EISDIR;
  } else if (!S_ISREG(st.st_mode) || st.st_size < 0) {
    job->err = EINVAL;
  } else {
    int64_t start = job->ranged ? job->offset : 0;
    size_t want = 0;
    if (start < (int64_t)st.st_size) {
      size_t left = (size_t)((int64_t)st.st_size - start);
      want = job->ranged && job->length < left ? job->length : left;
    }
    job->data = malloc(want > 0 ? want : 1);
    unsigned char *before = NULL;
    int64_t base = 0;
    size_t pages = 0;
    if (job->leave_cache && want > 0) {
#ifdef POSIX_FADV_RANDOM
      posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
#endif
      before = vmvault_cache_before(fd, start, want, &base, &pages);
    }
    if (job->data == NULL) {
      job->err = ENOMEM;
    } else {
      size_t done = 0;
      while (done < want) {
        ssize_t n = pread(fd, job->data + done, want - done, (off_t)(start + (int64_t)done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          job->err = errno;
          break;
        }
        if (n == 0) break;
        done += (size_t)n;
      }
      job->size = done;
    }
    vmvault_cache_restore(fd, base, before, pages);
  }
  close(fd);
}

static void free_data(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static void read_complete(napi_env env, napi_status status, void *arg) {
  read_job *job = arg;
  napi_value result;
  if (status == napi_ok && job->err == 0) {
    if (napi_create_external_arraybuffer(env, job->data, job->size, free_data, NULL, &result) == napi_ok) {
      job->data = NULL;
      napi_resolve_deferred(env, job->deferred, result);
    } else {
      napi_value copy;
      void *bytes;
      if (napi_create_arraybuffer(env, job->size, &bytes, &copy) == napi_ok) {
        if (job->size > 0) memcpy(bytes, job->data, job->size);
        napi_resolve_deferred(env, job->deferred, copy);
      } else {
        job->err = ENOMEM;
      }
    }
  }
  if (status != napi_ok || job->err != 0) {
    napi_reject_deferred(env, job->deferred, vmvault_errno_error(env, status != napi_ok ? EIO : job->err, job->op != NULL ? job->op : "read", job->path));
  }
  napi_delete_async_work(env, job->work);
  free(job->data);
  free(job->path);
  free(job);
}

/* A path argument as a new C string, or NULL with a TypeError (or out of memory) thrown. */
static char *path_arg(napi_env env, napi_value value) {
  size_t length, copied;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok || length == 0 || length > 4096) {
    napi_throw_type_error(env, NULL, "expected a path");
    return NULL;
  }
  char *path = malloc(length + 1);
  if (path == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, value, path, length + 1, &copied);
  if (strlen(path) != copied) {
    free(path);
    napi_throw_type_error(env, NULL, "the path holds a NUL character");
    return NULL;
  }
  return path;
}

/* readFile(path) when ranged is 0, readRange(path, offset, length) when it is 1. */
static napi_value start_read(napi_env env, napi_callback_info info, int ranged) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t offset = 0, count = 0;
  bool leave_cache = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < (ranged ? 3u : 1u)) {
    napi_throw_type_error(env, NULL, "expected a path");
    return NULL;
  }
  if (ranged && (napi_get_value_int64(env, argv[1], &offset) != napi_ok || napi_get_value_int64(env, argv[2], &count) != napi_ok ||
                 offset < 0 || count < 0 || count > ((int64_t)1 << 32))) {
    napi_throw_type_error(env, NULL, "expected a non-negative offset and a length of at most 4 GiB");
    return NULL;
  }
  if (ranged && argc >= 4 && napi_get_value_bool(env, argv[3], &leave_cache) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected leaveCache to be a boolean");
    return NULL;
  }
  char *path = path_arg(env, argv[0]);
  if (path == NULL) return NULL;
  read_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    free(path);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->path = path;
  job->ranged = ranged;
  job->leave_cache = leave_cache;
  job->offset = offset;
  job->length = (size_t)count;
  napi_value promise, name;
  napi_create_string_utf8(env, "vmvault read", NAPI_AUTO_LENGTH, &name);
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_async_work(env, NULL, name, read_execute, read_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    free(path);
    free(job);
    napi_throw_error(env, "EIO", "could not start the read");
    return NULL;
  }
  return promise;
}

static napi_value read_file(napi_env env, napi_callback_info info) { return start_read(env, info, 0); }
static napi_value read_range(napi_env env, napi_callback_info info) { return start_read(env, info, 1); }

/* The sizes of up to STAT_MAX files, stat'ed one after another on one thread-pool thread. */
#define STAT_MAX 4096

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  size_t count;
  char **paths;
  double *sizes;
} stat_job;

static void stat_execute(napi_env env, void *arg) {
  (void)env;
  stat_job *job = arg;
  for (size_t i = 0; i < job->count; i++) {
    struct stat st;
    job->sizes[i] = stat(job->paths[i], &st) == 0 ? (double)st.st_size : -1;
  }
}

static void stat_free(stat_job *job) {
  if (job->paths != NULL)
    for (size_t i = 0; i < job->count; i++) free(job->paths[i]);
  free(job->paths);
  free(job->sizes);
  free(job);
}

static void stat_complete(napi_env env, napi_status status, void *arg) {
  stat_job *job = arg;
  napi_value buffer, array;
  void *bytes;
  if (status == napi_ok && napi_create_arraybuffer(env, job->count * sizeof(double), &bytes, &buffer) == napi_ok &&
      napi_create_typedarray(env, napi_float64_array, job->count, buffer, 0, &array) == napi_ok) {
    if (job->count > 0) memcpy(bytes, job->sizes, job->count * sizeof(double));
    napi_resolve_deferred(env, job->deferred, array);
  } else {
    napi_value code, message, error;
    napi_create_string_utf8(env, "EIO", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, "EIO: the sizes could not be read", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, code, message, &error);
    napi_reject_deferred(env, job->deferred, error);
  }
  napi_delete_async_work(env, job->work);
  stat_free(job);
}

/* statSizes(paths): each file's size (stat, as fs.stat), or -1 where stat fails. */
static napi_value stat_sizes(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_array = false;
  uint32_t count = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_is_array(env, argv[0], &is_array) != napi_ok ||
      !is_array || napi_get_array_length(env, argv[0], &count) != napi_ok || count > STAT_MAX) {
    napi_throw_type_error(env, NULL, "expected an array of at most 4096 paths");
    return NULL;
  }
  stat_job *job = calloc(1, sizeof *job);
  if (job == NULL || (job->paths = calloc(count > 0 ? count : 1, sizeof(char *))) == NULL ||
      (job->sizes = calloc(count > 0 ? count : 1, sizeof(double))) == NULL) {
    if (job != NULL) stat_free(job);
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    if (napi_get_element(env, argv[0], i, &item) != napi_ok) {
      stat_free(job);
      napi_throw_type_error(env, NULL, "expected an array of paths");
      return NULL;
    }
    /* path_arg throws for a missing, empty, too long or NUL-holding path. */
    if ((job->paths[i] = path_arg(env, item)) == NULL) {
      stat_free(job);
      return NULL;
    }
    job->count = i + 1;
  }
  napi_value promise, name;
  napi_create_string_utf8(env, "vmvault stat", NAPI_AUTO_LENGTH, &name);
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_async_work(env, NULL, name, stat_execute, stat_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    stat_free(job);
    napi_throw_error(env, "EIO", "could not start the stat");
    return NULL;
  }
  return promise;
}

napi_status vmvault_register_readfile(napi_env env, napi_value exports) {
  napi_status s = vmvault_export(env, exports, "readFile", read_file);
  if (s == napi_ok) s = vmvault_export(env, exports, "readRange", read_range);
  if (s == napi_ok) s = vmvault_export(env, exports, "statSizes", stat_sizes);
  return s;
}

/*
 * Restoring a small file in one trip to libuv's thread pool: created under its temporary name,
 * sized, written, given its owner, mode and times, fsynced, closed and renamed into place by
 * one pool thread, and the promise settles once on the main thread. Through Node.js's fs each
 * of those nine calls is a trip of its own (a hand-off to a pool thread and a wake-up of the
 * main thread each), which is most of what restoring a folder of many small files costs.
 *
 *   writeFileWhole(tempPath, finalPath, data, segments, size, uid, gid, mode, timeSeconds[, xattrs])
 *       -> Promise<void | string[]>
 *
 * tempPath and finalPath are Buffers (a path's bytes, any but NUL). segments holds pairs of
 * (file offset, length): data holds their bytes one after the other. The file is created with
 * O_CREAT | O_EXCL | O_NOFOLLOW (never through a symlink someone put there) and mode 0600, set to
 * size bytes (what no segment covers stays a hole), written, then: fchown(uid, gid) unless both
 * are -1, fchmod(mode), the extended attributes xattrs packs (native/xattr.c; the promise then
 * resolves with one string per attribute: "" where it was set, else the errno name it was
 * refused with; a failure not about the attribute fails the file), futimens(timeSeconds for both times, microseconds as libuv rounds them
 * for fs.futimes), fsync, close, rename(tempPath, finalPath). A failure after the create closes
 * and removes the temporary file; the promise rejects with an Error whose code is the errno name
 * and whose `syscall` names the step that failed (open, ftruncate, write, fchown, fchmod,
 * fsetxattr, futime, fsync, close, rename), as Node.js's fs errors do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <node_api.h>

#include "native.h"

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  char *temp_path;
  char *final_path;
  unsigned char *data;
  double *segments;
  size_t segment_count;
  int64_t size;
  int64_t uid;
  int64_t gid;
  uint32_t mode;
  double time_seconds;
  unsigned char *xattrs;
  size_t xattrs_length;
  size_t xattr_count;
  int *xattr_errors;
  int err;
  const char *op;
} write_job;

/* As libuv's uv__fs_to_timespec: whole microseconds, the same times fs.futimes sets. */
static struct timespec to_timespec(double time) {
  struct timespec ts;
  ts.tv_sec = (time_t)time;
  ts.tv_nsec = (long)((time - (double)ts.tv_sec) * 1e9);
  ts.tv_nsec -= ts.tv_nsec % 1000;
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    ts.tv_sec -= 1;
  }
  return ts;
}

static void write_execute(napi_env env, void *arg) {
  (void)env;
  write_job *job = arg;
  int fd;
  do fd = open(job->temp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    job->err = errno;
    job->op = "open";
    return;
  }
  job->op = "ftruncate";
  if (ftruncate(fd, (off_t)job->size) != 0) goto failed;
  job->op = "write";
  size_t at = 0;
  for (size_t s = 0; s < job->segment_count; s++) {
    int64_t offset = (int64_t)job->segments[2 * s];
    size_t length = (size_t)job->segments[2 * s + 1];
    size_t done = 0;
    while (done < length) {
      ssize_t n = pwrite(fd, job->data + at + done, length - done, (off_t)(offset + (int64_t)done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) goto failed;
      if (n == 0) {
        errno = EIO;
        goto failed;
      }
      done += (size_t)n;
    }
    at += length;
  }
  job->op = "fchown";
  if ((job->uid != -1 || job->gid != -1) && fchown(fd, (uid_t)job->uid, (gid_t)job->gid) != 0) goto failed;
  job->op = "fchmod";
  if (fchmod(fd, (mode_t)job->mode) != 0) goto failed;
  if (job->xattrs != NULL) {
    job->op = "fsetxattr";
    int fatal = vmvault_apply_xattrs(fd, NULL, job->xattrs, job->xattrs_length, job->xattr_errors);
    if (fatal != 0) {
      errno = fatal;
      goto failed;
    }
  }
  job->op = "futime";
  struct timespec times[2];
  times[0] = to_timespec(job->time_seconds);
  times[1] = times[0];
  if (futimens(fd, times) != 0) goto failed;
  job->op = "fsync";
  if (fsync(fd) != 0) goto failed;
  job->op = "close";
  int closed = close(fd);
  fd = -1;
  if (closed != 0 && errno != EINTR) goto failed;
  job->op = "rename";
  if (rename(job->temp_path, job->final_path) != 0) goto failed;
  return;
failed:
  job->err = errno != 0 ? errno : EIO;
  if (fd >= 0) close(fd);
  unlink(job->temp_path);
}

static void write_complete(napi_env env, napi_status status, void *arg) {
  write_job *job = arg;
  if (status == napi_ok && job->err == 0) {
    napi_value value;
    if (job->xattrs == NULL) {
      napi_get_undefined(env, &value);
    } else {
      value = vmvault_xattr_answers(env, job->xattr_errors, job->xattr_count);
    }
    napi_resolve_deferred(env, job->deferred, value);
  } else {
    const char *op = job->op != NULL ? job->op : "write";
    napi_reject_deferred(env, job->deferred, vmvault_errno_error(env, status != napi_ok ? EIO : job->err, op, strcmp(op, "rename") == 0 ? job->final_path : job->temp_path));
  }
  napi_delete_async_work(env, job->work);
  free(job->temp_path);
  free(job->final_path);
  free(job->data);
  free(job->segments);
  free(job->xattrs);
  free(job->xattr_errors);
  free(job);
}

napi_value vmvault_errno_error(napi_env env, int e, const char *syscall, const char *path) {
  const char *code = vmvault_errno_name(e);
  char message[4400];
  if (path != NULL) snprintf(message, sizeof message, "%s: %s, %s '%s'", code, strerror(e), syscall, path);
  else snprintf(message, sizeof message, "%s: %s, %s", code, strerror(e), syscall);
  napi_value code_value, message_value, syscall_value, error;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_value);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &message_value);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value);
  napi_create_error(env, code_value, message_value, &error);
  napi_set_named_property(env, error, "syscall", syscall_value);
  return error;
}

char *vmvault_buffer_path(napi_env env, napi_value value) {
  void *bytes;
  size_t length;
  bool is_buffer = false;
  if (napi_is_buffer(env, value, &is_buffer) != napi_ok || !is_buffer || napi_get_buffer_info(env, value, &bytes, &length) != napi_ok || length == 0 ||
      length > 4096 || memchr(bytes, 0, length) != NULL) {
    napi_throw_type_error(env, NULL, "expected a path as a Buffer without NUL bytes");
    return NULL;
  }
  char *path = malloc(length + 1);
  if (path == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  memcpy(path, bytes, length);
  path[length] = 0;
  return path;
}

static napi_value write_file_whole(napi_env env, napi_callback_info info) {
  size_t argc = 10;
  napi_value argv[10];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 9) {
    napi_throw_type_error(env, NULL, "expected tempPath, finalPath, data, segments, size, uid, gid, mode, timeSeconds");
    return NULL;
  }
  napi_typedarray_type data_type, segments_type;
  size_t data_length, segments_length;
  void *data_bytes, *segment_values;
  if (napi_get_typedarray_info(env, argv[2], &data_type, &data_length, &data_bytes, NULL, NULL) != napi_ok || data_type != napi_uint8_array ||
      napi_get_typedarray_info(env, argv[3], &segments_type, &segments_length, &segment_values, NULL, NULL) != napi_ok || segments_type != napi_float64_array ||
      segments_length % 2 != 0) {
    napi_throw_type_error(env, NULL, "expected data as a Uint8Array and segments as a Float64Array of offset and length pairs");
    return NULL;
  }
  int64_t size, uid, gid;
  uint32_t mode;
  double time_seconds;
  if (napi_get_value_int64(env, argv[4], &size) != napi_ok || size < 0 || napi_get_value_int64(env, argv[5], &uid) != napi_ok || uid < -1 ||
      napi_get_value_int64(env, argv[6], &gid) != napi_ok || gid < -1 || napi_get_value_uint32(env, argv[7], &mode) != napi_ok || mode > 07777 ||
      napi_get_value_double(env, argv[8], &time_seconds) != napi_ok || !isfinite(time_seconds)) {
    napi_throw_type_error(env, NULL, "expected a size, a uid and gid (-1: unchanged), a mode and a time in seconds");
    return NULL;
  }
  /* The segments must lie inside the file and use exactly the data given. */
  const double *pairs = segment_values;
  double total = 0;
  for (size_t i = 0; i < segments_length; i += 2) {
    if (!(pairs[i] >= 0) || !(pairs[i + 1] >= 0) || pairs[i] + pairs[i + 1] > (double)size || pairs[i] != floor(pairs[i]) || pairs[i + 1] != floor(pairs[i + 1])) {
      napi_throw_range_error(env, NULL, "a segment lies outside the file");
      return NULL;
    }
    total += pairs[i + 1];
  }
  if (total != (double)data_length) {
    napi_throw_range_error(env, NULL, "the segments do not cover the data given");
    return NULL;
  }
  void *xattr_bytes = NULL;
  size_t xattrs_length = 0, xattr_count = 0;
  napi_valuetype xattrs_type = napi_undefined;
  if (argc >= 10) napi_typeof(env, argv[9], &xattrs_type);
  if (xattrs_type != napi_undefined) {
    napi_typedarray_type type;
    if (napi_get_typedarray_info(env, argv[9], &type, &xattrs_length, &xattr_bytes, NULL, NULL) != napi_ok || type != napi_uint8_array ||
        vmvault_check_xattrs(xattr_bytes, xattrs_length, &xattr_count) != 0) {
      napi_throw_type_error(env, NULL, "expected packed extended attributes as a Uint8Array");
      return NULL;
    }
  }
  write_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  if (xattrs_type != napi_undefined) {
    job->xattrs = malloc(xattrs_length > 0 ? xattrs_length : 1);
    job->xattr_errors = calloc(xattr_count > 0 ? xattr_count : 1, sizeof *job->xattr_errors);
    if (job->xattrs == NULL || job->xattr_errors == NULL) {
      free(job->xattrs);
      free(job->xattr_errors);
      free(job);
      napi_throw_error(env, "ENOMEM", "out of memory");
      return NULL;
    }
    if (xattrs_length > 0) memcpy(job->xattrs, xattr_bytes, xattrs_length);
    job->xattrs_length = xattrs_length;
    job->xattr_count = xattr_count;
  }
  job->temp_path = vmvault_buffer_path(env, argv[0]);
  job->final_path = job->temp_path == NULL ? NULL : vmvault_buffer_path(env, argv[1]);
  /* The bytes are copied: the caller's buffers may be reused once this returns. */
  job->data = malloc(data_length > 0 ? data_length : 1);
  job->segments = malloc(segments_length > 0 ? segments_length * sizeof(double) : 1);
  if (job->temp_path == NULL || job->final_path == NULL || job->data == NULL || job->segments == NULL) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_error(env, "ENOMEM", "out of memory");
    free(job->temp_path);
    free(job->final_path);
    free(job->data);
    free(job->segments);
    free(job->xattrs);
    free(job->xattr_errors);
    free(job);
    return NULL;
  }
  if (data_length > 0) memcpy(job->data, data_bytes, data_length);
  if (segments_length > 0) memcpy(job->segments, pairs, segments_length * sizeof(double));
  job->segment_count = segments_length / 2;
  job->size = size;
  job->uid = uid;
  job->gid = gid;
  job->mode = mode;
  job->time_seconds = time_seconds;
  napi_value promise, name;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok || napi_create_string_utf8(env, "vmvault:writeFileWhole", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, write_execute, write_complete, job, &job->work) != napi_ok || napi_queue_async_work(env, job->work) != napi_ok) {
    free(job->temp_path);
    free(job->final_path);
    free(job->data);
    free(job->segments);
    free(job->xattrs);
    free(job->xattr_errors);
    free(job);
    napi_throw_error(env, NULL, "cannot queue the write");
    return NULL;
  }
  return promise;
}

napi_status vmvault_register_writefile(napi_env env, napi_value exports) {
  return vmvault_export(env, exports, "writeFileWhole", write_file_whole);
}

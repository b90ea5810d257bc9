/*
 * A batch task of the native pipeline, between native/tasks.c (what each kind of task does, and
 * the functions JavaScript calls) and native/task-threads.c (the helper's task threads, their
 * queue, and handing finished tasks back to their JavaScript thread).
 */
#ifndef VMVAULT_TASK_H
#define VMVAULT_TASK_H

#include <stddef.h>
#include <stdint.h>
#include <node_api.h>

/* The most typed arrays one call references until its task completes. */
#define MAX_ARGS 12

typedef struct {
  unsigned char *p;
  size_t n;
} bytes;

struct env_state;

typedef struct task {
  struct task *next;
  struct env_state *owner;
  napi_deferred deferred;
  napi_ref refs[MAX_ARGS];
  int nrefs;
  int kind;
  int detect_zero;
  int failed;
  double result;
  bytes data, ids, nonces, key, id_key, out, status, zero, new_key, new_id_key, new_ids;
  const uint32_t *table;
  size_t count;
  const uint32_t *out_offsets;
  uint32_t *lengths;
} task;

/* native/tasks.c: a task's work, on a task thread: sets failed (and result) and zeroes the thread's keys and scratch. */
void vmvault_task_execute(task *t);

/* native/task-threads.c: a new task of kind from a call of want arguments (into argv); NULL, with an error thrown, when it has fewer. */
task *vmvault_task_begin(napi_env env, napi_callback_info info, int kind, size_t want, napi_value *argv, const char *usage);
/* A typed array argument of the given type (null allowed where nullable), referenced until the task completes: 1, or 0. */
int vmvault_task_arg(napi_env env, task *t, napi_value v, napi_typedarray_type want, void **p, size_t *n, int nullable);
/* Frees t (NULL allowed) and its references, and throws a RangeError (range) or a TypeError: NULL. */
napi_value vmvault_task_fail(napi_env env, task *t, const char *message, int range);
/* Queues t on up to threads_value task threads (the last argument of every task function, 1 to 64): its promise. */
napi_value vmvault_task_queue(napi_env env, task *t, napi_value threads_value);

#endif

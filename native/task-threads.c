/*
 * The native pipeline's task threads (native/tasks.c says what the tasks do): one queue per
 * process, threads started up to the number a call allows and never stopped, and each finished
 * task handed back to the JavaScript thread that queued it through a thread-safe function. A
 * JavaScript thread that ends takes its queued tasks out and waits for its running ones, and the
 * helper pins itself in the process once it has threads, since they run its code.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <node_api.h>
#include "task.h"

/*
 * Per JavaScript thread (instance data): the thread-safe function finished tasks go back
 * through, and how many tasks have not come back (outstanding, that thread's alone). in_threads
 * counts its tasks queued or running on the task threads. When the JavaScript thread ends (a
 * worker thread terminated, the process exiting), its cleanup hook takes its queued tasks out,
 * waits for its running ones (their arrays are that thread's memory, freed next), and sets
 * closed: a task thread hands a task back under lock, and only while closed is not set, so none
 * touches a function Node.js then tears down.
 */
typedef struct env_state {
  napi_threadsafe_function done;
  size_t outstanding;
  pthread_mutex_t lock;
  pthread_cond_t idle;
  size_t in_threads;
  int closed;
} env_state;

/* On the task's JavaScript thread: releases its arguments and settles its promise, rejected with error where one is given, and frees it. */
static void settle(napi_env env, task *t, const char *error) {
  for (int i = 0; i < t->nrefs; i++) napi_delete_reference(env, t->refs[i]);
  if (--t->owner->outstanding == 0) napi_unref_threadsafe_function(env, t->owner->done);
  napi_value value;
  if (error != NULL) {
    napi_value message;
    napi_create_string_utf8(env, error, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &value);
    napi_reject_deferred(env, t->deferred, value);
  } else {
    napi_create_double(env, t->result, &value);
    napi_resolve_deferred(env, t->deferred, value);
  }
  free(t);
}

/* A finished task, back on its JavaScript thread (env is NULL when that thread is gone: nothing to settle). */
static void complete(napi_env env, napi_value js_callback, void *context, void *data) {
  (void)js_callback;
  (void)context;
  task *t = data;
  if (env == NULL) free(t);
  else settle(env, t, t->failed ? "native pipeline task failed" : NULL);
}

/* The helper's task threads and their queue (one per process). */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  task *head, *tail;
  int threads;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0};

static void *task_thread(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&pool.lock);
    while (pool.head == NULL) pthread_cond_wait(&pool.wake, &pool.lock);
    task *t = pool.head;
    pool.head = t->next;
    if (pool.head == NULL) pool.tail = NULL;
    pthread_mutex_unlock(&pool.lock);
    vmvault_task_execute(t);
    env_state *e = t->owner;
    pthread_mutex_lock(&e->lock);
    /* A JavaScript thread that is going cannot take the task back. */
    if (e->closed || napi_call_threadsafe_function(e->done, t, napi_tsfn_nonblocking) != napi_ok) free(t);
    if (--e->in_threads == 0) pthread_cond_broadcast(&e->idle);
    pthread_mutex_unlock(&e->lock);
  }
  return NULL;
}

/*
 * Keeps the helper loaded for the life of the process once it has threads: Node.js unloads an
 * addon when the last worker thread that loaded it ends, and the task threads run its code.
 */
static int pin_module(void) {
  static int pinned = 0;
  Dl_info self;
  if (pinned) return 1;
  if (dladdr((void *)&pin_module, &self) == 0 || self.dli_fname == NULL || dlopen(self.dli_fname, RTLD_LAZY | RTLD_NODELETE) == NULL) return 0;
  pinned = 1;
  return 1;
}

/* Queues t, with up to threads task threads running (started as needed); 0, or -1 when not even one could start. */
static int submit(task *t, int threads) {
  pthread_mutex_lock(&pool.lock);
  while (pool.threads < threads && pin_module()) {
    pthread_t id;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&id, &attr, task_thread, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) break;
    pool.threads++;
  }
  if (pool.threads == 0) {
    pthread_mutex_unlock(&pool.lock);
    return -1;
  }
  t->next = NULL;
  if (pool.tail == NULL) pool.head = t;
  else pool.tail->next = t;
  pool.tail = t;
  pthread_cond_signal(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  return 0;
}

/* The JavaScript thread is ending: its queued tasks are dropped, its running ones waited for, and none goes back to it. */
static void close_env(void *data) {
  env_state *e = data;
  size_t dropped = 0;
  pthread_mutex_lock(&pool.lock);
  for (task **at = &pool.head, *prev = NULL; *at != NULL;) {
    task *t = *at;
    if (t->owner != e) {
      prev = t;
      at = &t->next;
      continue;
    }
    *at = t->next;
    if (pool.tail == t) pool.tail = prev;
    free(t);
    dropped++;
  }
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_lock(&e->lock);
  e->closed = 1;
  e->in_threads -= dropped;
  while (e->in_threads > 0) pthread_cond_wait(&e->idle, &e->lock);
  pthread_mutex_unlock(&e->lock);
  pthread_cond_destroy(&e->idle);
  pthread_mutex_destroy(&e->lock);
  free(e);
}

/* This JavaScript thread's state, made on its first task. */
static env_state *owner_of(napi_env env) {
  env_state *e = NULL;
  if (napi_get_instance_data(env, (void **)&e) == napi_ok && e != NULL) return e;
  e = calloc(1, sizeof *e);
  napi_value name;
  if (e == NULL || napi_create_string_utf8(env, "vmvault.pipeline", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, complete, &e->done) != napi_ok) {
    free(e);
    return NULL;
  }
  pthread_mutex_init(&e->lock, NULL);
  pthread_cond_init(&e->idle, NULL);
  napi_unref_threadsafe_function(env, e->done);
  /* Added after the function was made, so it runs before the function's own cleanup (hooks run last first). */
  if (napi_add_env_cleanup_hook(env, close_env, e) != napi_ok || napi_set_instance_data(env, e, NULL, NULL) != napi_ok) {
    napi_release_threadsafe_function(e->done, napi_tsfn_abort);
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->lock);
    free(e);
    return NULL;
  }
  return e;
}

/* A typed array argument of the given type (null allowed where nullable), referenced until the task completes. */
int vmvault_task_arg(napi_env env, task *t, napi_value v, napi_typedarray_type want, void **p, size_t *n, int nullable) {
  napi_valuetype vt;
  if (nullable && napi_typeof(env, v, &vt) == napi_ok && vt == napi_null) {
    *p = NULL;
    *n = 0;
    return 1;
  }
  napi_typedarray_type type;
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is || napi_get_typedarray_info(env, v, &type, n, p, NULL, NULL) != napi_ok || type != want) return 0;
  if (*p == NULL) *p = (void *)"";
  return t->nrefs < MAX_ARGS && napi_create_reference(env, v, 1, &t->refs[t->nrefs++]) == napi_ok;
}

napi_value vmvault_task_fail(napi_env env, task *t, const char *message, int range) {
  if (t != NULL)
    for (int i = 0; i < t->nrefs; i++) napi_delete_reference(env, t->refs[i]);
  free(t);
  if (range) napi_throw_range_error(env, NULL, message);
  else napi_throw_type_error(env, NULL, message);
  return NULL;
}


/* The last argument of every task function: how many task threads may run batches at once (1 to 64). */
napi_value vmvault_task_queue(napi_env env, task *t, napi_value threads_value) {
  int32_t threads = 0;
  if (napi_get_value_int32(env, threads_value, &threads) != napi_ok || threads < 1 || threads > 64) return vmvault_task_fail(env, t, "threads must be a whole number from 1 to 64", 1);
  napi_value promise;
  t->owner = owner_of(env);
  if (t->owner == NULL || napi_create_promise(env, &t->deferred, &promise) != napi_ok) return vmvault_task_fail(env, t, "could not queue a native pipeline task", 0);
  if (t->owner->outstanding++ == 0) napi_ref_threadsafe_function(env, t->owner->done);
  pthread_mutex_lock(&t->owner->lock);
  t->owner->in_threads++;
  pthread_mutex_unlock(&t->owner->lock);
  if (submit(t, threads) != 0) {
    pthread_mutex_lock(&t->owner->lock);
    t->owner->in_threads--;
    pthread_mutex_unlock(&t->owner->lock);
    settle(env, t, "could not start a native pipeline thread");
  }
  return promise;
}

/* A new task of kind from a call of want arguments (into argv); NULL, with an error thrown, when it has fewer. */
task *vmvault_task_begin(napi_env env, napi_callback_info info, int kind, size_t want, napi_value *argv, const char *usage) {
  size_t argc = want;
  task *t = calloc(1, sizeof *t);
  if (t == NULL) {
    vmvault_task_fail(env, NULL, "out of memory", 0);
    return NULL;
  }
  t->kind = kind;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    vmvault_task_fail(env, t, usage, 0);
    return NULL;
  }
  return t;
}

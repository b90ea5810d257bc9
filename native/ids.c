/*
 * Chunk IDs for the pipeline's tasks (native/tasks.c): keyed BLAKE2b-256 of a group of chunks at
 * once. Where native/build-blake2b.sh built build/Release/libvmvault_blake2b.so beside the
 * helper (blake2b_simd's hash_many: four chunks side by side in AVX2 registers), a group goes
 * there in one call; otherwise, or when it is switched off (hashMany(false), for tests), each
 * chunk goes through OpenSSL's BLAKE2BMAC. The library is used only after it gave OpenSSL's
 * bytes for keyed inputs of lengths around BLAKE2b's block edges, checked once when it loads.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include "native.h"

typedef int (*many_fn)(const unsigned char *key, size_t key_len, size_t out_len, size_t count, const unsigned char *const *inputs, const size_t *lengths,
                       unsigned char *outs);

static pthread_once_t loaded = PTHREAD_ONCE_INIT;
static many_fn many;
static volatile int switched_off;

/* Whether f gives OpenSSL's keyed BLAKE2b-256 for inputs of these lengths, hashed in one group. */
static int agrees_with_openssl(many_fn f) {
  static const size_t lengths[] = {0, 1, 63, 127, 128, 129, 255, 256, 257, 1000, 4096, 32768, 32769, 70001};
  enum { N = sizeof lengths / sizeof lengths[0], SIZE = 70001 + N };
  unsigned char key[32], *data = malloc(SIZE), ours[N * 32], theirs[32];
  const unsigned char *inputs[N];
  void *mac = vmvault_blake2b_new();
  int same = data != NULL && mac != NULL;
  for (size_t i = 0; i < sizeof key; i++) key[i] = (unsigned char)(0xa5 ^ i);
  for (size_t i = 0; same && i < SIZE; i++) data[i] = (unsigned char)((i * 2654435761u) >> 13);
  for (size_t i = 0; i < N; i++) inputs[i] = data + i;
  /* Offsets differ per input (data + i), so the group is not one input copied. */
  if (same && f(key, sizeof key, 32, N, inputs, lengths, ours) != 0) same = 0;
  for (size_t i = 0; same && i < N; i++)
    same = vmvault_blake2b(mac, key, inputs[i], lengths[i], theirs) == 0 && memcmp(ours + 32 * i, theirs, 32) == 0;
  if (mac != NULL) vmvault_blake2b_free(mac);
  free(data);
  return same;
}

static void load(void) {
  Dl_info self;
  char path[4096];
  if (dladdr((void *)&load, &self) == 0 || self.dli_fname == NULL) return;
  const char *slash = strrchr(self.dli_fname, '/');
  int dir = slash == NULL ? 0 : (int)(slash - self.dli_fname + 1);
  if (snprintf(path, sizeof path, "%.*slibvmvault_blake2b.so", dir, self.dli_fname) >= (int)sizeof path) return;
  /* Never unloaded: task threads may be inside it whenever the helper runs. */
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (lib == NULL) return;
  many_fn f = (many_fn)dlsym(lib, "vmvault_blake2b_many");
  if (f != NULL && agrees_with_openssl(f)) many = f;
}

static many_fn in_use(void) {
  pthread_once(&loaded, load);
  return switched_off ? NULL : many;
}

int vmvault_ids_flush(vmvault_id_group *g, void *mac, const unsigned char *key) {
  many_fn f = g->n > 1 ? in_use() : NULL;
  if (f != NULL) {
    unsigned char ids[VMVAULT_ID_GROUP * 32];
    if (f(key, 32, 32, g->n, g->in, g->length, ids) != 0) return -1;
    for (size_t i = 0; i < g->n; i++) memcpy(g->to[i], ids + 32 * i, 32);
  } else {
    for (size_t i = 0; i < g->n; i++)
      if (vmvault_blake2b(mac, key, g->in[i], g->length[i], g->to[i]) != 0) return -1;
  }
  g->n = 0;
  return 0;
}

int vmvault_ids_add(vmvault_id_group *g, void *mac, const unsigned char *key, const unsigned char *in, size_t length, unsigned char *to) {
  g->in[g->n] = in;
  g->length[g->n] = length;
  g->to[g->n] = to;
  return ++g->n == VMVAULT_ID_GROUP ? vmvault_ids_flush(g, mac, key) : 0;
}

/* hashMany([enable]) -> whether groups of chunks are hashed at once (the library loaded, and not switched off). */
static napi_value hash_many(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  bool enable;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc >= 1) {
    if (napi_get_value_bool(env, argv[0], &enable) != napi_ok) {
      napi_throw_type_error(env, NULL, "expected a boolean");
      return NULL;
    }
    switched_off = !enable;
  }
  napi_get_boolean(env, in_use() != NULL, &result);
  return result;
}

napi_status vmvault_register_ids(napi_env env, napi_value exports) {
  return vmvault_export(env, exports, "hashMany", hash_many);
}

/*
 * sha256(bytes): SHA-256 through the OpenSSL inside Node.js (EVP_Digest and EVP_sha256, looked
 * up at run time as native/aead.c looks up its functions; without them the function is left
 * out). For the code-cache loader (src/util/code-cache.ts), which checks the CLI bundle and its
 * V8 cache against the build's manifest before any command runs: node:crypto, which it hashed
 * with, took 15-17 ms and up to 2.4 MiB to load, held while Argon2id runs (docs/design.md §10).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <node_api.h>
#include "native.h"

typedef struct evp_md_st EVP_MD;
typedef int (*digest_fn)(const void *, size_t, unsigned char *, unsigned int *, const EVP_MD *, void *);
typedef const EVP_MD *(*md_fn)(void);

static digest_fn digest;
static md_fn sha256_md;

static pthread_once_t looked_up = PTHREAD_ONCE_INIT;

static void look_up(void) {
  *(void **)&digest = dlsym(RTLD_DEFAULT, "EVP_Digest");
  *(void **)&sha256_md = dlsym(RTLD_DEFAULT, "EVP_sha256");
  if (sha256_md != NULL && sha256_md() == NULL) sha256_md = NULL;
}

int vmvault_sha256(const void *data, size_t length, unsigned char *out) {
  pthread_once(&looked_up, look_up);
  if (digest == NULL || sha256_md == NULL) return 0;
  if (out == NULL) return 1;
  static const unsigned char none[1];
  unsigned int n = 0;
  return digest(length > 0 ? data : none, length, out, &n, sha256_md(), NULL) == 1 && n == 32;
}

/* sha256(Uint8Array): a new Buffer of the 32-byte digest. */
static napi_value sha256(napi_env env, napi_callback_info info) {
  size_t length = 0;
  void *data = NULL;
  if (!vmvault_bytes_argument(env, info, &data, &length)) return NULL;
  void *out = NULL;
  napi_value result;
  if (napi_create_buffer(env, 32, &out, &result) != napi_ok) return NULL;
  if (!vmvault_sha256(data, length, out)) {
    napi_throw_error(env, NULL, "OpenSSL's SHA-256 failed");
    return NULL;
  }
  return result;
}

napi_status vmvault_register_sha256(napi_env env, napi_value exports) {
  if (!vmvault_sha256(NULL, 0, NULL)) return napi_ok;
  return vmvault_export(env, exports, "sha256", sha256);
}

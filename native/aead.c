/*
 * XChaCha20-Poly1305-IETF for bulk data through the OpenSSL inside Node.js (its exported EVP
 * functions, looked up at run time: a build or a platform without them leaves the functions
 * out and callers use libsodium). The construction is libsodium's and the XChaCha draft's:
 * HChaCha20(key, nonce[0..16)) is the subkey, and ChaCha20-Poly1305-IETF (RFC 8439) runs under
 * it with the 12-byte nonce 0^4 || nonce[16..24). HChaCha20 is the ChaCha20 block function
 * without its final addition of the input state; OpenSSL's ChaCha20 with the 16-byte IV set to
 * nonce[0..16) computes that block with the addition, which is taken back word by word.
 * The subkey and the block are wiped after each call; the two OpenSSL contexts (one per thread)
 * hold the last key until the next call, and OpenSSL wipes them when the thread's environment ends.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <node_api.h>
#include "native.h"

typedef struct evp_cipher_st EVP_CIPHER;
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

#define CTRL_AEAD_GET_TAG 0x10
#define CTRL_AEAD_SET_TAG 0x11

typedef struct evp_mac_st EVP_MAC;
typedef struct evp_mac_ctx_st EVP_MAC_CTX;
typedef struct {
  const char *key;
  unsigned int data_type;
  void *data;
  size_t data_size;
  size_t return_size;
} OSSL_PARAM;

static struct {
  EVP_CIPHER *(*fetch)(void *, const char *, const char *);
  EVP_CIPHER_CTX *(*ctx_new)(void);
  void (*ctx_free)(EVP_CIPHER_CTX *);
  int (*init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *, const unsigned char *, int);
  int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
  int (*final)(EVP_CIPHER_CTX *, unsigned char *, int *);
  int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
  void (*cleanse)(void *, size_t);
  EVP_CIPHER *chacha;
  EVP_CIPHER *aead;
  int ready;
  /* Keyed BLAKE2b (BLAKE2BMAC) and a constant-time compare, for the pipeline's tasks (native/tasks.c). */
  EVP_MAC *(*mac_fetch)(void *, const char *, const char *);
  EVP_MAC_CTX *(*mac_ctx_new)(EVP_MAC *);
  void (*mac_ctx_free)(EVP_MAC_CTX *);
  int (*mac_set_params)(EVP_MAC_CTX *, const OSSL_PARAM *);
  int (*mac_init)(EVP_MAC_CTX *, const unsigned char *, size_t, const OSSL_PARAM *);
  int (*mac_update)(EVP_MAC_CTX *, const unsigned char *, size_t);
  int (*mac_final)(EVP_MAC_CTX *, unsigned char *, size_t *, size_t);
  OSSL_PARAM (*param_size_t)(const char *, size_t *);
  OSSL_PARAM (*param_end)(void);
  int (*memcmp)(const void *, const void *, size_t);
  EVP_MAC *blake2b;
  int mac_ready;
} ossl;

static pthread_once_t ossl_once = PTHREAD_ONCE_INIT;

struct vmvault_aead_ctx {
  EVP_CIPHER_CTX *block;
  EVP_CIPHER_CTX *aead;
};
typedef vmvault_aead_ctx aead_ctx;

/* Looks the functions up in the process (Node.js exports OpenSSL's), once for every thread. */
static void ossl_load(void) {
#define SYM(field, name) if ((*(void **)&ossl.field = dlsym(RTLD_DEFAULT, name)) == NULL) return
  SYM(fetch, "EVP_CIPHER_fetch");
  SYM(ctx_new, "EVP_CIPHER_CTX_new");
  SYM(ctx_free, "EVP_CIPHER_CTX_free");
  SYM(init, "EVP_CipherInit_ex");
  SYM(update, "EVP_CipherUpdate");
  SYM(final, "EVP_CipherFinal_ex");
  SYM(ctrl, "EVP_CIPHER_CTX_ctrl");
  SYM(cleanse, "OPENSSL_cleanse");
  ossl.chacha = ossl.fetch(NULL, "ChaCha20", NULL);
  ossl.aead = ossl.fetch(NULL, "ChaCha20-Poly1305", NULL);
  ossl.ready = ossl.chacha != NULL && ossl.aead != NULL;
  SYM(mac_fetch, "EVP_MAC_fetch");
  SYM(mac_ctx_new, "EVP_MAC_CTX_new");
  SYM(mac_ctx_free, "EVP_MAC_CTX_free");
  SYM(mac_set_params, "EVP_MAC_CTX_set_params");
  SYM(mac_init, "EVP_MAC_init");
  SYM(mac_update, "EVP_MAC_update");
  SYM(mac_final, "EVP_MAC_final");
  SYM(param_size_t, "OSSL_PARAM_construct_size_t");
  SYM(param_end, "OSSL_PARAM_construct_end");
  SYM(memcmp, "CRYPTO_memcmp");
#undef SYM
  ossl.blake2b = ossl.mac_fetch(NULL, "BLAKE2BMAC", NULL);
  ossl.mac_ready = ossl.blake2b != NULL;
}

static uint32_t le32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void put_le32(unsigned char *p, uint32_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24); }

/* HChaCha20(key, n16) into sub[32]; 0 on success. */
static int hchacha20(aead_ctx *c, const unsigned char *key, const unsigned char *n16, unsigned char *sub) {
  static const unsigned char zeros[64];
  static const uint32_t sigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
  unsigned char block[64];
  int len = 0;
  if (!ossl.init(c->block, NULL, NULL, key, n16, 1) || !ossl.update(c->block, block, &len, zeros, 64) || len != 64) return -1;
  for (int i = 0; i < 4; i++) put_le32(sub + 4 * i, le32(block + 4 * i) - sigma[i]);
  for (int i = 0; i < 4; i++) put_le32(sub + 16 + 4 * i, le32(block + 48 + 4 * i) - le32(n16 + 4 * i));
  ossl.cleanse(block, sizeof block);
  return 0;
}

int vmvault_xchacha(aead_ctx *c, int enc, const unsigned char *key, const unsigned char *nonce, const unsigned char *in, size_t inlen,
                   const unsigned char *ad, size_t adlen, unsigned char *out) {
  unsigned char sub[32];
  unsigned char iv[12] = {0};
  memcpy(iv + 4, nonce + 16, 8);
  size_t mlen = enc ? inlen : inlen - 16;
  int rc = -1, len = 0;
  if (mlen > INT32_MAX || adlen > INT32_MAX) return -1;
  if (hchacha20(c, key, nonce, sub) != 0) goto done;
  if (!ossl.init(c->aead, NULL, NULL, sub, iv, enc)) goto done;
  if (adlen > 0 && !ossl.update(c->aead, NULL, &len, ad, (int)adlen)) goto done;
  if (!enc && !ossl.ctrl(c->aead, CTRL_AEAD_SET_TAG, 16, (void *)(in + mlen))) goto done;
  if (mlen > 0 && !ossl.update(c->aead, out, &len, in, (int)mlen)) goto done;
  if (ossl.final(c->aead, out + mlen, &len) != 1) goto done;
  if (enc && !ossl.ctrl(c->aead, CTRL_AEAD_GET_TAG, 16, out + mlen)) goto done;
  rc = 0;
done:
  ossl.cleanse(sub, sizeof sub);
  if (rc != 0 && !enc && mlen > 0) memset(out, 0, mlen);
  return rc;
}

void vmvault_aead_free(vmvault_aead_ctx *c) {
  if (c == NULL) return;
  if (c->block != NULL) ossl.ctx_free(c->block);
  if (c->aead != NULL) ossl.ctx_free(c->aead);
  free(c);
}

static void free_ctx(void *data) { vmvault_aead_free(data); }

/* Each xchachaEncrypt/Decrypt function object's own context (vmvault_export_lazy). */
static void *make_ctx(void) { return vmvault_aead_new(); }

int vmvault_ossl_aead(void) { return pthread_once(&ossl_once, ossl_load) == 0 && ossl.ready; }

vmvault_aead_ctx *vmvault_aead_new(void) {
  if (!vmvault_ossl_aead()) return NULL;
  aead_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->block = ossl.ctx_new();
  c->aead = ossl.ctx_new();
  if (c->block == NULL || c->aead == NULL || !ossl.init(c->block, ossl.chacha, NULL, NULL, NULL, 1) || !ossl.init(c->aead, ossl.aead, NULL, NULL, NULL, 1)) {
    vmvault_aead_free(c);
    return NULL;
  }
  return c;
}

void vmvault_aead_scrub(vmvault_aead_ctx *c) {
  static const unsigned char zeros[32];
  ossl.init(c->block, NULL, NULL, zeros, zeros, 1);
  ossl.init(c->aead, NULL, NULL, zeros, zeros, 1);
}

int vmvault_ossl_mac(void) { return vmvault_ossl_aead() && ossl.mac_ready; }

void *vmvault_blake2b_new(void) {
  if (!vmvault_ossl_mac()) return NULL;
  EVP_MAC_CTX *m = ossl.mac_ctx_new(ossl.blake2b);
  if (m == NULL) return NULL;
  size_t size = 32;
  OSSL_PARAM params[2] = {ossl.param_size_t("size", &size), ossl.param_end()};
  if (!ossl.mac_set_params(m, params)) {
    ossl.mac_ctx_free(m);
    return NULL;
  }
  return m;
}

void vmvault_blake2b_free(void *m) {
  if (m != NULL) ossl.mac_ctx_free(m);
}

int vmvault_blake2b(void *m, const unsigned char *key, const unsigned char *in, size_t inlen, unsigned char *out) {
  size_t outlen = 0;
  if (!ossl.mac_init(m, key, 32, NULL) || !ossl.mac_update(m, in, inlen) || !ossl.mac_final(m, out, &outlen, 32) || outlen != 32) return -1;
  return 0;
}

void vmvault_blake2b_scrub(void *m) {
  static const unsigned char zeros[32];
  ossl.mac_init(m, zeros, 32, NULL);
}

int vmvault_equal32(const unsigned char *a, const unsigned char *b) { return ossl.memcmp(a, b, 32) == 0; }

void vmvault_cleanse(void *p, size_t n) { ossl.cleanse(p, n); }

static int view(napi_env env, napi_value v, unsigned char **data, size_t *length) {
  napi_typedarray_type type;
  void *p = NULL;
  if (napi_get_typedarray_info(env, v, &type, length, &p, NULL, NULL) != napi_ok || type != napi_uint8_array) return 0;
  *data = p;
  return 1;
}

/* xchachaEncrypt / xchachaDecrypt(key, nonce, input, ad, out) -> true, or false when a ciphertext does not authenticate. */
static napi_value run(napi_env env, napi_callback_info info, int enc) {
  size_t argc = 5;
  napi_value argv[5];
  unsigned char *key, *nonce, *in, *ad, *out;
  size_t keylen, noncelen, inlen, adlen, outlen;
  napi_value result;
  aead_ctx *c = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&c) != napi_ok || c == NULL || argc < 5 || !view(env, argv[0], &key, &keylen) ||
      !view(env, argv[1], &nonce, &noncelen) || !view(env, argv[2], &in, &inlen) || !view(env, argv[3], &ad, &adlen) ||
      !view(env, argv[4], &out, &outlen)) {
    napi_throw_type_error(env, NULL, "expected five Uint8Arrays");
    return NULL;
  }
  if (keylen != 32 || noncelen != 24 || (enc ? outlen != inlen + 16 : (inlen < 16 || outlen != inlen - 16))) {
    napi_throw_range_error(env, NULL, "bad key, nonce or output length");
    return NULL;
  }
  /* In place (the same start) works, as with libsodium; a shifted overlap would read bytes already written. */
  if (in != out && outlen > 0 && inlen > 0 && in < out + outlen && out < in + inlen) {
    napi_throw_range_error(env, NULL, "input and output overlap");
    return NULL;
  }
  int rc = vmvault_xchacha(c, enc, key, nonce, in, inlen, ad, adlen, out);
  if (rc != 0 && enc) {
    napi_throw_error(env, NULL, "encryption failed");
    return NULL;
  }
  napi_get_boolean(env, rc == 0, &result);
  return result;
}

static napi_value encrypt(napi_env env, napi_callback_info info) { return run(env, info, 1); }
static napi_value decrypt(napi_env env, napi_callback_info info) { return run(env, info, 0); }

static const vmvault_lazy_export exported[] = {{"xchachaEncrypt", encrypt, vmvault_ossl_aead, make_ctx, free_ctx}, {"xchachaDecrypt", decrypt, vmvault_ossl_aead, make_ctx, free_ctx}};

napi_status vmvault_register_aead(napi_env env, napi_value exports) {
  napi_status s = vmvault_export_lazy(env, exports, &exported[0]);
  return s == napi_ok ? vmvault_export_lazy(env, exports, &exported[1]) : s;
}

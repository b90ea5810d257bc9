/* vmvault's native helper: one module, built by `npm install` (binding.gyp). */
#ifndef VMVAULT_NATIVE_H
#define VMVAULT_NATIVE_H
#include <node_api.h>

/* native/readfile.c: readFile(path) and readRange(path, offset, length) -> Promise<ArrayBuffer>, one trip to the thread pool each. */
napi_status vmvault_register_readfile(napi_env env, napi_value exports);

#endif

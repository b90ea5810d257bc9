/* adviseHugePages(view): asks the kernel for transparent huge pages behind a buffer. */
#include <stdint.h>
#include <sys/mman.h>
#include <node_api.h>
#include "native.h"

#define HUGE_PAGE_BYTES ((uintptr_t)2 * 1024 * 1024)

/*
 * madvise(MADV_HUGEPAGE) over the whole 2 MiB pages inside a Uint8Array's bytes (the view's
 * own, not the rest of its buffer). Returns the bytes advised: 0 when the view holds no whole
 * huge page, when the kernel refuses, or on a system without the call. Pages already touched
 * stay small; the advice is for those touched after it.
 */
static napi_value advise_huge_pages(napi_env env, napi_callback_info info) {
  size_t length = 0;
  void *data = NULL;
  napi_value result;
  if (!vmvault_bytes_argument(env, info, &data, &length)) return NULL;
  double advised = 0;
#ifdef MADV_HUGEPAGE
  uintptr_t start = ((uintptr_t)data + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
  uintptr_t end = ((uintptr_t)data + length) & ~(HUGE_PAGE_BYTES - 1);
  if (data != NULL && end > start && madvise((void *)start, end - start, MADV_HUGEPAGE) == 0) advised = (double)(end - start);
#endif
  napi_create_double(env, advised, &result);
  return result;
}

napi_status vmvault_register_memory(napi_env env, napi_value exports) {
  return vmvault_export(env, exports, "adviseHugePages", advise_huge_pages);
}

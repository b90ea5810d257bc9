/*
 * liblz4's block functions for native/tasks.c: the sources the lz4 package builds its binding
 * from (binding.gyp finds them through the package), so a blob sealed here is byte for byte the
 * one the package's LZ4_compress_default gives. Their symbols stay inside the helper.
 */
#define LZ4LIB_VISIBILITY __attribute__((visibility("hidden")))
#include "lz4.c"

int vmvault_lz4_compress(const char *src, char *dst, int srcSize, int dstCapacity) { return LZ4_compress_default(src, dst, srcSize, dstCapacity); }
int vmvault_lz4_decompress(const char *src, char *dst, int compressedSize, int dstCapacity) { return LZ4_decompress_safe(src, dst, compressedSize, dstCapacity); }
int vmvault_lz4_bound(int size) { return LZ4_compressBound(size); }

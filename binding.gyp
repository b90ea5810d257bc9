{
  "targets": [
    {
      "target_name": "vmvault_native",
      "sources": ["native/extents.c", "native/readfile.c", "native/writefile.c", "native/memory.c", "native/pagecache.c", "native/xattr.c", "native/aead.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}

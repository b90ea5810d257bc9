{
  "targets": [
    {
      "target_name": "vmvault_lz4",
      "type": "static_library",
      "sources": ["native/lz4-block.c"],
      "include_dirs": ["<!(node -p \"require('path').join(require('path').dirname(require.resolve('lz4/package.json')), 'deps', 'lz4', 'lib')\")"],
      "cflags": ["-O3", "-fPIC", "-fvisibility=hidden"]
    },
    {
      "target_name": "vmvault_native",
      "dependencies": ["vmvault_lz4"],
      "sources": ["native/extents.c", "native/readfile.c", "native/writefile.c", "native/memory.c", "native/pagecache.c", "native/xattr.c", "native/aead.c", "native/tasks.c", "native/task-threads.c", "native/ids.c", "native/sha256.c", "native/source.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}

{
  "targets": [
    {
      "target_name": "vmvault_extents",
      "sources": ["native/extents.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}

{
  "targets": [
    {
      "target_name": "tshyve_sandbox",
      "type": "loadable_module",
      "sources": ["native/sandbox.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-fvisibility=default"]
    }
  ]
}

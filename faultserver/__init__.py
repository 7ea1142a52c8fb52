"""blobdl's scriptable servers: tools of the project, used by its tests and benchmarks alike
(like urllib3's ``dummyserver``). Not part of the installed ``blobdl`` package.

- ``server``: a real HTTP/1.1 file server whose faults a test scripts (truncations, wrong
  Content-Range, stalls, resets, redirects...); ``serverctl`` starts and drives it.
- ``proxy``: a minimal forwarding HTTP proxy (absolute-URI requests and CONNECT).
- ``registry``: an OCI registry with a token server and an S3 side, for ``blobdl pull``.
- ``hostile_registry``: a scriptable registry whose every answer a test example chooses.
- ``hub``: a stand-in Hugging Face Hub (the fault server with the Hub's API and ``resolve``),
  with a fault server as its storage origin, for ``blobdl hf``.
"""

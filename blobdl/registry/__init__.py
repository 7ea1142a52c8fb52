"""Models from OCI/Ollama registries: references (``_names``), the registry protocol
(``_oci``), Ollama's store (``_store``; who uses a blob, ``_claims``; who owns what we add,
``_owner``; its manifests as Ollama reads them, ``_catalog``), the pull that ties them
together (``_pull``) and the housekeeping of what pulls leave behind (``_prune``).
"""

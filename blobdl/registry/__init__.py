"""Models from OCI/Ollama registries: references (``_names``), the registry protocol
(``_oci``), Ollama's store (``_store``; who uses a blob, ``_claims``; its manifests as Ollama
reads them, ``_catalog``) and the pull that ties them together (``_pull``).
"""

"""Models from OCI/Ollama registries: names (``_names``), the registry protocol (``_oci``),
Ollama's store (``_store``) and the pull that ties them together (``_pull``).
"""

"""Hugging Face repositories: the Hub's API (``_hub``), repository names, listings and
patterns (``_repo``), huggingface_hub's conventions for the Hub, cache and token (``_env``),
its cache (``_cache``) and ``--local-dir`` layout (``_local_dir``), what they share
(``_disk``) and offer (``_layouts``), the disk alone under ``HF_HUB_OFFLINE`` (``_offline``),
and ``hf_download``, the story (``_download``).
"""

"""Many downloads under one connection budget: ``download_many`` (``_scheduler``), what it
is asked (``_manifest``: items, manifests, ``--base-dir``), the pool whose seats fetch small
items over kept connections (``_pool``), and who holds which connection (``_budget``)."""

"""Many downloads under one connection budget: ``download_many`` and manifests."""

"""The engine: one download, from the probe to the rename.

``_download`` tells the story (lock, probe, resume or plan, preallocate, run, verify,
rename) of the ``_order`` it was given, and tells the caller through ``_tell``.
``_coordinator`` runs the parts: it launches lanes on the ``_worker`` processes'
threads, samples the ``_counter_table`` they write, and acts on pure decisions: the plan
(``_plan``), a request's size (``_chunk``), what to steal (``_steal``), what to do after a
failure (``_failure``). ``_parts`` keeps each part's record and measurements; ``_lane`` is the
hot loop that moves one range's bytes into the file; ``_hasher`` follows it with sha256.
Every rate the coordinator acts on is measured in ``_rates``; ``_pinned`` holds the remote
every lane fetches from, and refreshes its URL when a signed one expires. A batch's small
blob takes ``_small``'s way instead (the same story on one thread, its first GET its
probe), and a batch's large item runs under the lanes and rate ``_share`` gives it now.
"""

"""Child processes: how every child starts (``_spawn``), how signals reach the one that
owns cancellation (``_signals``), and a clean interpreter for threaded callers
(``_clean_process``, the caller's side; ``_clean_child``, the interpreter's; ``_spare``, one
started ahead for a thread that runs one download after another).
"""

"""Child processes: how every child starts (``_spawn``), how signals reach the one that
owns cancellation (``_signals``), and a clean interpreter for threaded callers
(``_clean_process``).
"""

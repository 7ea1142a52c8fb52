"""The disk: what blobdl writes, and how it keeps a file whole.

File primitives (``_files``: opening our own files, atomic writes, directory fsyncs, lock
waits), the destination and its temporary file (``_destination``), its name when none is
given (``_names``), a destination already there (``_existing``) and the record a finished
file carries of where it came from (``_source``), positional writes (``_writes``), one
writer per destination (``_lock``), the resume record (``_resume``), the content-addressed
cache (``_cache``) and sha256 digests (``_digest``).
"""

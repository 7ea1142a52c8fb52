"""The HTTP edge: everything that speaks to a server.

URLs (``_urls``), pools with TLS (``_pool``, ``_connections``), proxy routes (``_routes``),
a connection's set-up bounded as a whole (``_set_up``), one GET as
we make it (``_request``), a small document such as a registry's manifest (``_document``),
the probe (``_probe``), a range's body (``_body``,
``_socket_reads``), a lane's session (``_session``), header text (``_headers``), what the
probe learned (``_remote``), the retry policy (``_retry``) and error translation
(``_translate``). Nothing above this layer touches urllib3 or http.client.
"""

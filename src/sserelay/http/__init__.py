"""The HTTP fronts: one path for every request (``front``, with ``request``, ``routes``,
``responses``), ``POST /publish`` (``publish``, ``body``), and what moves the bytes: the
native server (``native``) and the ASGI adapter (``asgi``, with ``buffered`` streams)."""

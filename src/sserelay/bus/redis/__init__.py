"""Redis as the bus: ``listener`` (pub/sub), ``log`` (one stream per durable channel),
``publish`` and ``scripts`` (keys, names and the atomic Lua scripts)."""

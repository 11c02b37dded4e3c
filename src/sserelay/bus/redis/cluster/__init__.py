"""Redis Cluster as the bus: ``layout`` (what differs from one Redis: names, the publish
script, the clients, finding out which it is), ``topology`` (the slot map), ``shard`` (one
sharded pub/sub connection to a master), ``listener`` and ``log`` (the relay's side, on a
cluster or on one Redis, whichever the URL reaches)."""

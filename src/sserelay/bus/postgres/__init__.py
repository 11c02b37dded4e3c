"""PostgreSQL as the bus: ``listener`` (LISTEN), ``log`` (the durable log), ``publish``,
``schema`` (migrations, ``sql/``), ``statements`` (every query), ``errors`` (the driver's
errors translated), ``embedded`` (the zero-setup server) and ``admin`` helpers."""

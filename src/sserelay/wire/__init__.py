"""The wire: SSE framing (``sse``), the events on it (``envelope`` in, ``message`` out),
channel-name rules (``channels``) and event ids (``ids``). Bytes and names; nothing else."""

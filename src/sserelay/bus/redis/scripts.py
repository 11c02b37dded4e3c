"""Keys, pub/sub names and the Lua scripts of durable channels on Redis.

A durable publish runs one script, atomically on the Redis server (:data:`PUBLISH_LUA`):
it reads the id of the channel stream's last entry (``prev``), ``XADD``-s the event
(automatic id ``ms-seq``, so ids grow in the order Redis ran the publishes), trims the
stream to the configured retention (``MAXLEN ~ N`` and/or ``MINID ~ now - age``), and
``PUBLISH``-es ``{"seq": "<id>", "prev": "<prev id>", "data": ..., "event": ...}`` on
the channel's durable pub/sub name. Every entry also stores its ``prev``. Because the
stream and the notification change in one atomic step, an event is in the stream iff
it was notified, as with PostgreSQL's ``sserelay.publish``.

Names: the stream of channel ``c`` is ``<prefix>sserelay:log:<c>``; plain publishes go
to ``<prefix><c>`` and durable ones to ``<prefix>sserelay.d.<c>`` (the ``sserelay.``
namespace is reserved, so user text published on a channel can never pass for a
durable event). The prefix (empty by default) separates deployments that share one
Redis (pub/sub ignores the database number).
"""

from __future__ import annotations

#: Raw (non-durable) PUBLISH payloads: Redis takes far more, but every relay holds each
#: message in its output buffer; events larger than this belong in a durable channel.
MAX_RAW_PAYLOAD_BYTES = 1024 * 1024
#: Durable events whose data is larger are notified by id only; relays read the body.
LARGE_DATA_BYTES = 7999
LOG_KEY = "sserelay:log:"
#: Before a channel's name: its durable pub/sub name.
DURABLE_PREFIX = "sserelay.d."


def stream_key(prefix: str, channel: str) -> str:
    return f"{prefix}{LOG_KEY}{channel}"


def durable_channel(prefix: str, channel: str) -> str:
    return f"{prefix}{DURABLE_PREFIX}{channel}"


def escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# The position of the channel's last entry, even when retention emptied the stream.
_LAST_ID = """
local function last_id(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last > 0 then return last[1][1] end
  if redis.call('EXISTS', key) == 1 then
    local info = redis.call('XINFO', 'STREAM', key)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then return info[i + 1] end
    end
  end
  return '0-0'
end
"""

#: KEYS: stream. ARGV: pub/sub channel, data, event ('' none), maxlen (0 none),
#: max age ms (0 none), large threshold (bytes). Returns {id, prev}.
PUBLISH_LUA = (
    _LAST_ID
    + """
local key = KEYS[1]
local data, event = ARGV[2], ARGV[3]
local maxlen, max_age = tonumber(ARGV[4]), tonumber(ARGV[5])
local prev = last_id(key)
local id
if event ~= '' then
  id = redis.call('XADD', key, '*', 'd', data, 'p', prev, 'e', event)
else
  id = redis.call('XADD', key, '*', 'd', data, 'p', prev)
end
if maxlen > 0 then redis.call('XTRIM', key, 'MAXLEN', '~', maxlen) end
if max_age > 0 then
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', key, 'MINID', '~', string.format('%d', ms - max_age))
end
local head = '{"seq":"' .. id .. '","prev":"' .. prev .. '"'
local msg
if string.len(data) > tonumber(ARGV[6]) then
  msg = head .. ',"large":true}'
else
  msg = head .. ',"data":' .. cjson.encode(data)
  if event ~= '' then msg = msg .. ',"event":' .. cjson.encode(event) end
  msg = msg .. '}'
end
redis.call('PUBLISH', ARGV[1], msg)
return {id, prev}
"""
)

#: KEYS: stream. Returns the last id handed out ('0-0' if none).
HEAD_LUA = _LAST_ID + "return last_id(KEYS[1])\n"

#: KEYS: stream. ARGV: live id, lower bound ('-' or '(id'), n. The id after which at
#: most n entries lead to live, or false if there are no more than n.
BACK_LUA = """
local n = tonumber(ARGV[3])
local r = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', n + 1)
if #r > n then return r[#r][1] end
return false
"""


#: KEYS: streams. Returns the last id handed out on each ('0-0' if none), in order.
HEADS_LUA = (
    _LAST_ID
    + """
local out = {}
for i, key in ipairs(KEYS) do out[i] = last_id(key) end
return out
"""
)

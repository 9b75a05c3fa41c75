"""The Lua scripts RedisStorage runs: one per operation that touches several keys.

A script runs atomically on the server (no other command runs in between) and costs
one round trip; every key it touches is passed in KEYS, as Redis requires. Each
script's comment gives its KEYS and ARGV.
"""

from __future__ import annotations

__all__ = ["SCRIPTS"]


def _with_push(body: str) -> str:
    """Prepend ``push(key, first)``: RPUSH ARGV[first..] in slices, because Lua's
    unpack() has a stack limit (about 8000 values) that a long append would hit."""
    return (
        """
local function push(key, first)
  local n = 0
  for i = first, #ARGV, 1000 do
    n = redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  return n
end"""
        + body
    )


SCRIPTS = {
    # KEYS: value, index. ARGV: id, json.
    "write": """
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1""",
    # KEYS: list, index. ARGV: id, items...
    "append": _with_push("""
local n = push(KEYS[1], 2)
redis.call('SADD', KEYS[2], ARGV[1])
return n"""),
    # KEYS: list, index. ARGV: id, items...
    "replace_log": _with_push("""
redis.call('DEL', KEYS[1])
push(KEYS[1], 2)
redis.call('SADD', KEYS[2], ARGV[1])
return 1"""),
    # KEYS: index, n keys to delete, then keys whose existence keeps the id listed.
    # ARGV: id, SREM or ZREM, n. The index is reconciled even when nothing was deleted,
    # so an entry Redis expired natively leaves the listing too.
    "delete": """
local n = tonumber(ARGV[3])
local removed = redis.call('DEL', unpack(KEYS, 2, n + 1))
if #KEYS == n + 1 or redis.call('EXISTS', unpack(KEYS, n + 2)) == 0 then
  redis.call(ARGV[2], KEYS[1], ARGV[1])
end
return removed""",
    # KEYS: list, index, keys whose existence keeps the id listed. ARGV: id, expected item.
    # Pops only when the last item is still the one the caller read and checked (a
    # concurrent append changes it: the caller reads again), so a damaged item is never
    # removed and nothing appended meanwhile is lost.
    "pop_log": """
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[2] then return 0 end
redis.call('RPOP', KEYS[1])
if #KEYS == 2 or redis.call('EXISTS', unpack(KEYS, 3)) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 1""",
    # KEYS: hash, order, index. ARGV: conversation id, memory id, json.
    # A new member goes after the last one; a replaced one keeps its score (its place).
    "put_member": """
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  local seq = 1
  if #last > 0 then seq = tonumber(last[2]) + 1 end
  redis.call('ZADD', KEYS[2], seq, ARGV[2])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1""",
    # KEYS: hash, order, index, every part. ARGV: conversation id, memory id.
    "delete_member": """
local removed = redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('EXISTS', unpack(KEYS, 4)) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return removed""",
    # KEYS: value, index. ARGV: key, json, px ('' = no expiry), score.
    "write_cache": """
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1""",
    # KEYS: index, cache keys. ARGV: their ids. Drops index members whose entry Redis
    # expired natively; returns those ids.
    "prune_cache": """
local gone = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 and redis.call('ZREM', KEYS[1], ARGV[i - 1]) == 1 then
    gone[#gone + 1] = ARGV[i - 1]
  end
end
return gone""",
    # KEYS: set index, then n keys per id. ARGV: n, the ids. Drops each id none of whose
    # keys exists (evicted under maxmemory, or deleted by hand); returns those ids.
    "prune_index": """
local n = tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  local first = 2 + (i - 2) * n
  if redis.call('EXISTS', unpack(KEYS, first, first + n - 1)) == 0 and redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    gone[#gone + 1] = ARGV[i]
  end
end
return gone""",
    # KEYS: index, cache keys. ARGV: now_ms, their ids. The expiry is checked again here:
    # another client may have refreshed an entry since it was picked.
    "expire_cache": """
local removed = 0
local now = tonumber(ARGV[1])
for i = 2, #KEYS do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '')
  if score and score <= now then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed""",
    # KEYS: serializer marker, the index keys. ARGV: the serializer this storage uses.
    # Returns the serializer that wrote the prefix, recording it first when none is: a
    # prefix that already holds data from before the marker existed was written as JSON.
    "claim_serializer": """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
stored = ARGV[1]
if redis.call('EXISTS', unpack(KEYS, 2, #KEYS)) > 0 then stored = 'json' end
redis.call('SET', KEYS[1], stored)
return stored""",
}

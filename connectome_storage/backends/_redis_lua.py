"""The Lua scripts RedisStorage runs: one per operation that touches several keys.

A script runs atomically on the server (no other command runs in between) and costs
one round trip; every key it touches is passed in KEYS, as Redis requires. Each
script's comment gives its KEYS and ARGV.

The conversation scripts (``CONVERSATION_SCRIPTS``) carry out the conversation store's
expiry (docs/redis.md, "Conversation expiry"): the storage clock's ``now_ms`` comes in
ARGV, a part of an expired conversation reads as missing, and a write to it first removes
the conversation whole. The scripts that walk many conversations (listing, sweeping) name
their keys inside the script with ``enc``, the port of ``naming.encode_name`` the
key-value scripts use, as those do; every other script is passed its keys.
"""

from __future__ import annotations

from ._redis_kv_lua import ENCODE_NAME_LUA

__all__ = ["CONVERSATION_SCRIPTS", "SCRIPTS"]


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
    # KEYS: keys of one hash slot. Their MEMORY USAGE summed (a missing key counts 0).
    "memory_usage": """
local bytes = 0
for _, key in ipairs(KEYS) do bytes = bytes + (redis.call('MEMORY', 'USAGE', key) or 0) end
return bytes""",
    # KEYS: serializer marker, the index keys (none on a cluster). ARGV: the serializer this storage uses.
    # Returns the serializer that wrote the prefix, recording it first when none is: a
    # prefix that already holds data from before the marker existed was written as JSON.
    "claim_serializer": """
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
stored = ARGV[1]
if #KEYS > 1 and redis.call('EXISTS', unpack(KEYS, 2, #KEYS)) > 0 then stored = 'json' end
redis.call('SET', KEYS[1], stored)
return stored""",
}


# The conversation keys, in the order every single-conversation script gets them in KEYS.
CONVERSATION_SUFFIXES = ("meta", "current", "raw", "chunks", "mem", "order")

# KEYS: meta, current, raw, chunks, mem, order (a conversation's keys), idx:conversations,
# idx:conversation-expiry. ARGV: conversation id, now_ms (the storage clock), then each
# script's own. The metadata hash's expires_ms decides whether the conversation has
# expired; the expiry zset lists every conversation that has one, scored by it.
_CONVERSATION = """
local META, CURRENT, RAW, CHUNKS, MEM, ORDER, IDX, EXPZ = unpack(KEYS, 1, 8)
local PARTS = {META, CURRENT, RAW, CHUNKS, MEM, ORDER}
local ID, NOW = ARGV[1], tonumber(ARGV[2])
local META_FIELDS = {'created_ms', 'updated_ms', 'message_count', 'ttl', 'expires_ms', 'metadata'}
local function ms(x) return string.format('%d', x) end
-- expires_ms of the metadata (nil: none). A metadata key of another type is named in the
-- error, unless ``tolerant`` (a delete, which must remove damaged data too: none then).
local function expiry(tolerant)
  local e = redis.pcall('HGET', META, 'expires_ms')
  if type(e) == 'table' and e.err then
    if tolerant then return nil end
    error({err = 'WRONGTYPE ' .. META .. ' (conversation metadata) is not a hash'})
  end
  return tonumber(e or '')
end
local function expired_at(e) return e ~= nil and e <= NOW end
-- Remove the conversation whole; how many of its keys there were.
local function drop()
  local n = redis.call('DEL', unpack(PARTS))
  redis.call('SREM', IDX, ID)
  redis.call('ZREM', EXPZ, ID)
  return n
end
-- Before a write: an expired conversation is removed whole, so the write starts a new
-- one. Returns the milliseconds the conversation has left (nil: it never expires).
local function begin()
  local e = expiry()
  if expired_at(e) then drop() return nil end
  if e then return math.max(1, e - NOW) end
  return nil
end
-- Keys written now get the conversation's remaining time, unless they kept theirs.
local function expire(left, ...)
  if not left then return end
  for _, key in ipairs({...}) do
    if redis.call('PTTL', key) == -1 then redis.call('PEXPIRE', key, ms(left)) end
  end
end
-- Apply an expiry (nil: none) to every key of the conversation and to the expiry zset.
local function set_expiry(e)
  if e then
    redis.call('ZADD', EXPZ, ms(e), ID)
    local left = ms(math.max(1, e - NOW))
    for _, key in ipairs(PARTS) do redis.call('PEXPIRE', key, left) end
  else
    redis.call('ZREM', EXPZ, ID)
    for _, key in ipairs(PARTS) do redis.call('PERSIST', key) end
  end
end
-- Replace the metadata with ARGV[first .. first + 5] (META_FIELDS, '' for None) and apply its expiry.
local function put_meta(first)
  redis.call('DEL', META)
  local args = {'conversation_id', ID}
  for i, name in ipairs(META_FIELDS) do
    local value = ARGV[first + i - 1]
    if value ~= '' then args[#args + 1] = name; args[#args + 1] = value end
  end
  redis.call('HSET', META, unpack(args))
  set_expiry(tonumber(ARGV[first + 4]))
end
-- After a change to the raw history: the metadata's message_count follows it.
local function count()
  if redis.call('EXISTS', META) == 1 then redis.call('HSET', META, 'message_count', redis.call('LLEN', RAW)) end
end
-- Listed while any key of it is left.
local function relist()
  if redis.call('EXISTS', unpack(PARTS)) > 0 then
    redis.call('SADD', IDX, ID)
  else
    redis.call('SREM', IDX, ID)
    redis.call('ZREM', EXPZ, ID)
  end
end
"""

# KEYS: idx:conversations, idx:conversation-expiry (of one bucket, on a cluster). ARGV:
# head, tail, now_ms, then each script's own. Names a conversation's keys from its id as
# the key layout does (_redis_layout.py): head .. encoded id .. tail .. suffix.
_CONVERSATIONS = (
    ENCODE_NAME_LUA
    + """
local IDX, EXPZ = KEYS[1], KEYS[2]
local HEAD, TAIL, NOW = ARGV[1], ARGV[2], ARGV[3]
local SUFFIXES = {'meta', 'current', 'raw', 'chunks', 'mem', 'order'}
local function keys_of(id)
  local base, keys = HEAD .. enc(id) .. TAIL, {}
  for i, suffix in ipairs(SUFFIXES) do keys[i] = base .. suffix end
  return keys
end
"""
)

# The lean scripts (conv_set, conv_append): KEYS meta, the part, idx:conversations; ARGV id,
# now_ms. The other keys of the conversation are needed only to remove an expired one, and
# are named from these two (meta is <base>meta, the expiry index is the listing index with
# "conversations" replaced by "conversation-expiry": _redis_layout.py), in the same slot.
_LEAN = """
local META, PART, IDX = KEYS[1], KEYS[2], KEYS[3]
local ID, NOW = ARGV[1], tonumber(ARGV[2])
local HAS_META = false
-- As begin(): an expired conversation is removed whole first. The milliseconds left (nil: never expires).
local function lean_begin()
  local fields = redis.pcall('HLEN', META)
  if type(fields) == 'table' then
    error({err = 'WRONGTYPE ' .. META .. ' (conversation metadata) is not a hash'})
  end
  if fields == 0 then return nil end
  HAS_META = true
  local e = tonumber(redis.call('HGET', META, 'expires_ms') or '')
  if e == nil then return nil end
  if e > NOW then return string.format('%d', math.max(1, e - NOW)) end
  local base = string.sub(META, 1, -5)
  redis.call('DEL', META, base .. 'current', base .. 'raw', base .. 'chunks', base .. 'mem', base .. 'order')
  redis.call('SREM', IDX, ID)
  redis.call('ZREM', string.sub(IDX, 1, -14) .. 'conversation-expiry', ID)
  HAS_META = false
  return nil
end
"""

# A read of one part: KEYS meta, the part; ARGV now_ms. Nothing (nil, [] or two empty
# lists) when the conversation has expired on the storage clock.
_READ = """
local e = redis.pcall('HGET', KEYS[1], 'expires_ms')
if type(e) == 'table' and e.err then
  error({err = 'WRONGTYPE ' .. KEYS[1] .. ' (conversation metadata) is not a hash'})
end
e = tonumber(e or '')
local expired = e ~= nil and e <= tonumber(ARGV[1])
"""

CONVERSATION_SCRIPTS = {
    # KEYS: meta, value. ARGV: now.
    "conv_get": _READ
    + """
if expired then return false end
return redis.call('GET', KEYS[2])""",
    # KEYS: meta, list. ARGV: now.
    "conv_lrange": _READ
    + """
if expired then return {} end
return redis.call('LRANGE', KEYS[2], 0, -1)""",
    # KEYS: meta, mem, order. ARGV: now. The order and the hash, read at one instant.
    "conv_members": _READ
    + """
if expired then return {{}, {}} end
return {redis.call('ZRANGE', KEYS[3], 0, -1), redis.call('HGETALL', KEYS[2])}""",
    # The two hottest writes take three keys, not eight (fewer arguments to pack and send):
    # KEYS: meta, the part, idx:conversations. ARGV: id, now, then the value or the items.
    # An existing key is replaced or appended to keeping its TTL; a new one gets the time
    # the conversation has left. Returns 1 (conv_set) or the new length (conv_append).
    "conv_set": _LEAN
    + """
local left = lean_begin()
if not redis.call('SET', PART, ARGV[3], 'XX', 'KEEPTTL') then
  redis.call('SET', PART, ARGV[3])
  if left then redis.call('PEXPIRE', PART, left) end
end
redis.call('SADD', IDX, ID)
return 1""",
    "conv_append": _with_push(
        _LEAN
        + """
local left = lean_begin()
local n = push(PART, 3)
if n == #ARGV - 2 and left then redis.call('PEXPIRE', PART, left) end
if HAS_META then redis.call('HSET', META, 'message_count', n) end
redis.call('SADD', IDX, ID)
return n"""
    ),
    # ARGV: id, now, items...
    "conv_replace": _with_push(
        _CONVERSATION
        + """
local left = begin()
redis.call('DEL', RAW)
push(RAW, 3)
count()
expire(left, RAW)
redis.call('SADD', IDX, ID)
return 1"""
    ),
    # ARGV: id, now, slots in KEYS of the keys to delete. Returns how many existed.
    "conv_delete_part": _CONVERSATION
    + """
begin()
local removed = 0
for i = 3, #ARGV do
  local key = KEYS[tonumber(ARGV[i])]
  removed = removed + redis.call('DEL', key)
  if key == RAW then count() end
end
relist()
return removed""",
    # ARGV: id, now. The last raw message, for _pop_log to check before it pops.
    "conv_peek": _CONVERSATION
    + """
begin()
return redis.call('LINDEX', RAW, -1)""",
    # ARGV: id, now, expected item. Pops only when the last item is still the one the
    # caller read and checked (see pop_log).
    "conv_pop": _CONVERSATION
    + """
begin()
if redis.call('LINDEX', RAW, -1) ~= ARGV[3] then return 0 end
redis.call('RPOP', RAW)
count()
relist()
return 1""",
    # ARGV: id, now, memory id, json. A new memory goes after the last one; a replaced one
    # keeps its place.
    "conv_put_member": _CONVERSATION
    + """
local left = begin()
redis.call('HSET', MEM, ARGV[3], ARGV[4])
if not redis.call('ZSCORE', ORDER, ARGV[3]) then
  local last = redis.call('ZRANGE', ORDER, -1, -1, 'WITHSCORES')
  local seq = 1
  if #last > 0 then seq = tonumber(last[2]) + 1 end
  redis.call('ZADD', ORDER, seq, ARGV[3])
end
expire(left, MEM, ORDER)
redis.call('SADD', IDX, ID)
return 1""",
    # ARGV: id, now, memory id.
    "conv_delete_member": _CONVERSATION
    + """
begin()
local removed = redis.call('HDEL', MEM, ARGV[3])
redis.call('ZREM', ORDER, ARGV[3])
relist()
return removed""",
    # ARGV: id, now. Removes every key; 1 only when the conversation was live.
    "conv_drop": _CONVERSATION
    + """
local e = expiry(true)
if drop() > 0 and not expired_at(e) then return 1 end
return 0""",
    # ARGV: id, now.
    "conv_exists": _CONVERSATION
    + """
if expired_at(expiry()) then return 0 end
if redis.call('EXISTS', unpack(PARTS)) > 0 then return 1 end
return 0""",
    # ARGV: id, now, include_expired (1/0). {metadata hash fields, raw history}, or nil when
    # the conversation is missing (or expired, unless include_expired).
    "conv_load": _CONVERSATION
    + """
if expired_at(expiry()) and ARGV[3] ~= '1' then return false end
local meta = redis.call('HGETALL', META)
local raw = redis.call('LRANGE', RAW, 0, -1)
if #meta == 0 and #raw == 0 and redis.call('EXISTS', CURRENT, CHUNKS, MEM, ORDER) == 0 then return false end
return {meta, raw}""",
    # ARGV: id, now, the six metadata fields (META_FIELDS; '' = None), items...
    "conv_save": _with_push(
        _CONVERSATION
        + """
begin()
redis.call('DEL', RAW)
if #ARGV >= 9 then push(RAW, 9) end
put_meta(3)
count()
redis.call('SADD', IDX, ID)
return 1"""
    ),
    # ARGV: id, now, update_timestamp (1/0), the six fields of the metadata to create when
    # there is none, items... Never reads the history: RPUSH and LLEN answer its length.
    # Returns the stored metadata hash.
    "conv_append_meta": _with_push(
        _CONVERSATION
        + """
local left = begin()
local n
if #ARGV >= 10 then n = push(RAW, 10) else n = redis.call('LLEN', RAW) end
if redis.call('HEXISTS', META, 'created_ms') == 1 then
  redis.call('HSET', META, 'message_count', n)
  if ARGV[3] == '1' then redis.call('HSET', META, 'updated_ms', ARGV[2]) end
  expire(left, RAW)
else
  put_meta(4)
  redis.call('HSET', META, 'message_count', n)
end
redis.call('SADD', IDX, ID)
return redis.call('HGETALL', META)"""
    ),
    # ARGV: id, now, ttl, expires_ms ('' = none), the encoded empty metadata dict for a
    # conversation that has no metadata yet. 0 when missing or expired.
    "conv_set_expiry": _CONVERSATION
    + """
if expired_at(expiry()) or redis.call('EXISTS', unpack(PARTS)) == 0 then return 0 end
if redis.call('EXISTS', META) == 0 then
  redis.call('HSET', META, 'conversation_id', ID, 'created_ms', ARGV[2], 'updated_ms', ARGV[2],
             'message_count', redis.call('LLEN', RAW), 'metadata', ARGV[5])
end
for i, name in ipairs({'ttl', 'expires_ms'}) do
  local value = ARGV[2 + i]
  if value == '' then redis.call('HDEL', META, name) else redis.call('HSET', META, name, value) end
end
set_expiry(tonumber(ARGV[4]))
return 1""",
    # ARGV: id, now, put (1) or remove (0), the six metadata fields. Removing the metadata
    # removes the expiry with it.
    "meta_put": _CONVERSATION
    + """
if ARGV[3] == '0' then
  redis.call('DEL', META)
  set_expiry(nil)
  relist()
  return 1
end
begin()
put_meta(4)
redis.call('SADD', IDX, ID)
return 1""",
    # KEYS: idx:conversations, idx:conversation-expiry. ARGV: head, tail, now, mode (list or
    # expired), offset, budget. Prunes the index entries of conversations expired on the
    # storage clock: each leaves idx:conversations, and the expiry zset too once Redis has
    # removed its keys. Examines at most ``budget`` expired ids; when there may be more it
    # returns {next offset} and is called again from there. Otherwise {-1, the listed ids
    # (list) or the expired ids whose keys remain (expired), how many of those there are}.
    "conv_index": _CONVERSATIONS
    + """
local offset, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local batch = redis.call('ZRANGEBYSCORE', EXPZ, '-inf', NOW, 'LIMIT', offset, budget)
local kept = 0
for _, id in ipairs(batch) do
  redis.call('SREM', IDX, id)
  if redis.call('EXISTS', unpack(keys_of(id))) == 0 then redis.call('ZREM', EXPZ, id) else kept = kept + 1 end
end
if #batch == budget then return {offset + kept} end
local expired = redis.call('ZRANGEBYSCORE', EXPZ, '-inf', NOW)
if ARGV[4] == 'list' then return {-1, redis.call('SMEMBERS', IDX), #expired} end
return {-1, expired, #expired}""",
    # KEYS: idx:conversations, idx:conversation-expiry (they name the bucket's slot). ARGV: head,
    # tail, now (unused), then the ids of one batch. get_storage_stats' counts of those
    # conversations, on the server: {raw messages, memories, keys of the wrong type, bytes
    # (MEMORY USAGE of every key, as the MEMORY USAGE command reports it), then each chunk
    # document, for the caller to parse and count}. A batch of 1,000 runs a few milliseconds.
    "conv_stats": _CONVERSATIONS
    + """
local raw, mem, bad, bytes, chunks = 0, 0, 0, 0, {}
for i = 4, #ARGV do
  local keys = keys_of(ARGV[i])
  local n = redis.pcall('LLEN', keys[3])
  if type(n) == 'number' then raw = raw + n else bad = bad + 1 end
  n = redis.pcall('HLEN', keys[5])
  if type(n) == 'number' then mem = mem + n else bad = bad + 1 end
  local c = redis.pcall('GET', keys[4])
  if type(c) == 'string' then chunks[#chunks + 1] = c elseif type(c) == 'table' then bad = bad + 1 end
  for _, key in ipairs(keys) do bytes = bytes + (redis.call('MEMORY', 'USAGE', key) or 0) end
end
return {raw, mem, bad, bytes, chunks}""",
    # KEYS: idx:conversations, idx:conversation-expiry. ARGV: head, tail, now, budget. Removes
    # up to ``budget`` conversations expired on the storage clock, whole (those whose keys
    # Redis removed already count too); returns how many.
    "conv_sweep": _CONVERSATIONS
    + """
local batch = redis.call('ZRANGEBYSCORE', EXPZ, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(batch) do
  redis.call('DEL', unpack(keys_of(id)))
  redis.call('SREM', IDX, id)
  redis.call('ZREM', EXPZ, id)
end
return #batch""",
}

SCRIPTS |= CONVERSATION_SCRIPTS

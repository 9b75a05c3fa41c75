"""The Lua scripts behind RedisStorage's key-value collections (_redis_kv.py has the layout).

Each script is one atomic step and one round trip. KEYS always starts with the
namespace's three index keys (key zset, expiry zset, expiring-tags hash); ARGV starts
with the namespace's key base ``P kv:{<ns>}:``. Entry hashes and tag sets are named inside
the script from that base with ``enc``, a port of ``naming.encode_name`` (the tests compare
the two on every kind of character). Those names share the namespace's hash tag, so on a
cluster they live in the slot of the keys passed in KEYS.

An entry hash Redis expired on its own (PEXPIRE) leaves its key in the indexes; ``drop``
removes such a key everywhere, using the expiring-tags hash to find its tag sets (the entry
hash, which held the tags, is gone). Every script that meets such a key drops it.
"""

from __future__ import annotations

__all__ = ["ENCODE_NAME_LUA", "KV_SCRIPTS"]

# ``enc``: also used by the conversation scripts (_redis_lua.py), which name keys the same way.
ENCODE_NAME_LUA = """
local DEVICES = {CON = 1, PRN = 1, AUX = 1, NUL = 1}
for n = 0, 9 do DEVICES['COM' .. n] = 1; DEVICES['LPT' .. n] = 1 end
local function byte_escape(c) return string.format('%%%02X', string.byte(c)) end
-- naming.encode_name: keep [A-Za-z0-9._-], percent-encode every other UTF-8 byte, escape a
-- leading or trailing dot and the first letter of a Windows device name.
local function enc(s)
  local n = string.gsub(s, '[^A-Za-z0-9._%-]', byte_escape)
  if string.sub(n, 1, 1) == '.' then n = '%2E' .. string.sub(n, 2) end
  if string.sub(n, -1) == '.' then n = string.sub(n, 1, -2) .. '%2E' end
  if DEVICES[string.upper(string.match(n, '^[^.]*'))] then n = byte_escape(string.sub(n, 1, 1)) .. string.sub(n, 2) end
  return n
end
"""

_COMMON = (
    ENCODE_NAME_LUA
    + """
local BASE = ARGV[1]
local KEYZ, EXPZ, ETAGS = KEYS[1], KEYS[2], KEYS[3]
local function entry_key(key) return BASE .. 'e:' .. enc(key) end
local function tag_key(name, value) return BASE .. 'tag:' .. enc(name) .. ':' .. enc(value) end
-- The tags of an entry as stored (JSON object), or nil when unreadable.
local function tag_pairs(json)
  if not json then return nil end
  local ok, tags = pcall(cjson.decode, json)
  if ok and type(tags) == 'table' then return tags end
  return nil
end
local function untag(key, json)
  local tags = tag_pairs(json)
  if tags then
    for name, value in pairs(tags) do
      if type(name) == 'string' and type(value) == 'string' then redis.call('SREM', tag_key(name, value), key) end
    end
  end
end
-- Remove an entry and every trace of it in the indexes.
local function drop(key, tags_json)
  redis.call('DEL', entry_key(key))
  untag(key, tags_json or redis.call('HGET', ETAGS, key))
  redis.call('ZREM', KEYZ, key)
  redis.call('ZREM', EXPZ, key)
  redis.call('HDEL', ETAGS, key)
end
-- The entry's stored fields, or false when its key is not a hash (hand-written data).
local function fields(key, ...)
  local got = redis.pcall('HMGET', entry_key(key), ...)
  if type(got) == 'table' and got.err then return false end
  return got
end
-- Whether HMGET found nothing because the entry hash no longer exists.
-- value, tags, created_ms, updated_ms, expires_ms of an entry (value false unless mode is
-- 'r', which reads it too); false when the key is not a hash.
local function record_fields(key, mode)
  if mode == 'r' then return fields(key, 'value', 'tags', 'created_ms', 'updated_ms', 'expires_ms') end
  local f = fields(key, 'tags', 'created_ms', 'updated_ms', 'expires_ms')
  if f then table.insert(f, 1, false) end
  return f
end

local function gone(f, key)
  for j = 1, 5 do if f[j] then return false end end
  return redis.call('EXISTS', entry_key(key)) == 0
end
local function live_at(expires, now)
  return not expires or (tonumber(expires) or now + 1) > now
end
"""
)

_FORGET_NAMESPACE = """
local function forget_if_empty(namespace)
  if redis.call('ZCARD', KEYZ) == 0 then
    redis.call('SREM', KEYS[4], namespace)
    redis.call('DEL', EXPZ, ETAGS)
  end
end
"""

KV_SCRIPTS = {
    # KEYS: keyz, expz, etags, idx:kv. ARGV: base, namespace, now, if_not_exists (1/0), then
    # per record 7 + 2t values: key, value, tags json, created, updated, expires ('' = never),
    # t, then t (name, value) pairs. Checks first, writes after: all records or none.
    "kv_put": _COMMON
    + """
local now, ifnx = tonumber(ARGV[3]), ARGV[4] == '1'
local records, i = {}, 5
while i <= #ARGV do
  local t = tonumber(ARGV[i + 6])
  local r = {key = ARGV[i], value = ARGV[i + 1], tags = ARGV[i + 2], created = ARGV[i + 3],
             updated = ARGV[i + 4], expires = ARGV[i + 5], first = i + 7, last = i + 6 + 2 * t}
  local e = entry_key(r.key)
  r.e = e
  if redis.call('TYPE', e).ok == 'hash' then
    local old = redis.call('HMGET', e, 'created_ms', 'expires_ms', 'tags')
    r.old_tags = old[3]
    if old[1] and live_at(old[2], now) then
      if ifnx then return 0 end
      if tonumber(old[1]) then r.created = old[1] end
    end
  end
  records[#records + 1] = r
  i = r.last + 1
end
for _, r in ipairs(records) do
  local e, key = r.e, r.key
  untag(key, r.old_tags or redis.call('HGET', ETAGS, key))
  redis.call('DEL', e)
  redis.call('HSET', e, 'value', r.value, 'tags', r.tags, 'created_ms', r.created, 'updated_ms', r.updated)
  redis.call('ZADD', KEYZ, 0, key)
  if r.expires ~= '' then
    redis.call('HSET', e, 'expires_ms', r.expires)
    redis.call('PEXPIRE', e, math.max(1, tonumber(r.expires) - now))
    redis.call('ZADD', EXPZ, r.expires, key)
    if r.last >= r.first then redis.call('HSET', ETAGS, key, r.tags) else redis.call('HDEL', ETAGS, key) end
  else
    redis.call('ZREM', EXPZ, key)
    redis.call('HDEL', ETAGS, key)
  end
  for j = r.first, r.last, 2 do redis.call('SADD', tag_key(ARGV[j], ARGV[j + 1]), key) end
end
redis.call('SADD', KEYS[4], ARGV[2])
return 1""",
    # KEYS: keyz, expz, etags, idx:kv. ARGV: base, namespace, now, keys...
    # Returns how many of the keys were live.
    "kv_delete": _COMMON
    + _FORGET_NAMESPACE
    + """
local now, live = tonumber(ARGV[3]), 0
for i = 4, #ARGV do
  local key = ARGV[i]
  local got = fields(key, 'expires_ms', 'tags')
  if got and redis.call('EXISTS', entry_key(key)) == 1 and live_at(got[1], now) then live = live + 1 end
  drop(key, got and got[2] or nil)
end
forget_if_empty(ARGV[2])
return live""",
    # KEYS: keyz, expz, etags. ARGV: base, now, key, expires ('' = never).
    # 1 when the entry was live and now has the new expiry, else 0.
    "kv_set_expiry": _COMMON
    + """
local now, key, expires = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local e = entry_key(key)
local got = fields(key, 'created_ms', 'expires_ms', 'tags')
if not got or not got[1] or not live_at(got[2], now) then return 0 end
if expires == '' then
  redis.call('HDEL', e, 'expires_ms')
  redis.call('PERSIST', e)
  redis.call('ZREM', EXPZ, key)
  redis.call('HDEL', ETAGS, key)
else
  redis.call('HSET', e, 'expires_ms', expires)
  redis.call('PEXPIRE', e, math.max(1, tonumber(expires) - now))
  redis.call('ZADD', EXPZ, expires, key)
  local tags = tag_pairs(got[3])
  if tags and next(tags) then redis.call('HSET', ETAGS, key, got[3]) end
end
return 1""",
    # One batch of a walk over the key zset in key order.
    # KEYS: keyz, expz, etags. ARGV: base, now, min, max (ZRANGEBYLEX bounds), want (live
    # entries to return), budget (index members to examine at most), mode: 'k' keys only,
    # 'm' keys with tags and times, 'r' whole records.
    # Returns {done (1/0), last member examined or false, entries...}; an entry is its key
    # ('k') or key, value, tags, created, updated, expires ('m' has false for the value);
    # a key whose entry is not a hash comes back as key followed by five false values.
    "kv_walk": _COMMON
    + """
local now, want, budget, mode = tonumber(ARGV[2]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local out = {0, false}
local got, seen, cursor, upper = 0, 0, ARGV[3], ARGV[4]
local function emit_record(key)
  local f = record_fields(key, mode)
  if not f then
    for _, v in ipairs({key, false, false, false, false, false}) do out[#out + 1] = v end
    return true
  end
  if gone(f, key) then drop(key) return false end  -- expired natively
  if not live_at(f[6], now) then return false end
  out[#out + 1] = key
  for j = 1, 5 do out[#out + 1] = f[j] or false end
  return true
end
local function emit_key(key)
  local score = redis.call('ZSCORE', EXPZ, key)
  if score then
    if tonumber(score) <= now then return false end
    if redis.call('EXISTS', entry_key(key)) == 0 then drop(key) return false end
  end
  out[#out + 1] = key
  return true
end
local emit = mode == 'k' and emit_key or emit_record
while got < want and seen < budget do
  local asked = math.min(500, budget - seen)
  local chunk = redis.call('ZRANGEBYLEX', KEYZ, cursor, upper, 'LIMIT', 0, asked)
  for _, key in ipairs(chunk) do
    seen = seen + 1
    out[2] = key
    if emit(key) then got = got + 1 end
    if got >= want then break end
  end
  if #chunk < asked and (got < want or out[2] == chunk[#chunk]) then out[1] = 1 break end
  cursor = '(' .. out[2]
end
return out""",
    # Entries carrying every tag given: SINTER of the tag sets, then liveness.
    # KEYS: keyz, expz, etags, tag sets... ARGV: base, now, prefix ('' = none), mode 'm'/'r'.
    # Returns entries as kv_walk does (no header), in no particular order.
    "kv_tagged": _COMMON
    + """
local now, prefix, mode = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local members
if #KEYS == 4 then members = redis.call('SMEMBERS', KEYS[4])
else members = redis.call('SINTER', unpack(KEYS, 4)) end
local out = {}
for _, key in ipairs(members) do
  if prefix == '' or string.sub(key, 1, #prefix) == prefix then
    local f = record_fields(key, mode)
    if not f then
      for _, v in ipairs({key, false, false, false, false, false}) do out[#out + 1] = v end
    elseif gone(f, key) then
      drop(key)
    elseif live_at(f[6], now) then
      out[#out + 1] = key
      for j = 1, 5 do out[#out + 1] = f[j] or false end
    end
  end
end
return out""",
    # Remove expired entries (on the storage clock, or already gone from Redis) met in one
    # batch of the expiry zset, starting at rank ARGV[3].
    # KEYS: keyz, expz, etags, idx:kv. ARGV: base, namespace, offset, count, now.
    # Returns {removed, kept, examined}.
    "kv_sweep": _COMMON
    + _FORGET_NAMESPACE
    + """
local offset, count, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local batch = redis.call('ZRANGE', EXPZ, offset, offset + count - 1, 'WITHSCORES')
local removed, kept = 0, 0
for i = 1, #batch, 2 do
  local key, expires = batch[i], tonumber(batch[i + 1])
  if expires <= now or redis.call('EXISTS', entry_key(key)) == 0 then
    local got = fields(key, 'tags')
    drop(key, got and got[1] or nil)
    removed = removed + 1
  else
    kept = kept + 1
  end
end
forget_if_empty(ARGV[2])
return {removed, kept, #batch / 2}""",
    # Remove up to ARGV[3] entries of a namespace (the first in key order; 0: all of them).
    # KEYS: keyz, expz, etags, idx:kv. ARGV: base, namespace, count, now.
    # Returns {live entries removed, entries left}.
    "kv_clear": _COMMON
    + _FORGET_NAMESPACE
    + """
local now, live = tonumber(ARGV[4]), 0
for _, key in ipairs(redis.call('ZRANGE', KEYZ, 0, tonumber(ARGV[3]) - 1)) do
  local got = fields(key, 'expires_ms', 'tags')
  if got and redis.call('EXISTS', entry_key(key)) == 1 and live_at(got[1], now) then live = live + 1 end
  drop(key, got and got[2] or nil)
end
forget_if_empty(ARGV[2])
return {live, redis.call('ZCARD', KEYZ)}""",
    # Counts of one batch of a namespace's expiry zset (from rank ARGV[3], ARGV[4] members),
    # dropping entries Redis expired natively; the live count comes from cardinalities.
    # KEYS: keyz, expz, etags. ARGV: base, now, offset, count.
    # Returns {dropped, expired on the clock, examined, members of the key zset}.
    "kv_census": _COMMON
    + """
local now, offset, count = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local dropped, expired = 0, 0
local batch = redis.call('ZRANGE', EXPZ, offset, offset + count - 1, 'WITHSCORES')
for i = 1, #batch, 2 do
  local key = batch[i]
  if redis.call('EXISTS', entry_key(key)) == 0 then drop(key) dropped = dropped + 1
  elseif tonumber(batch[i + 1]) <= now then expired = expired + 1 end
end
return {dropped, expired, #batch / 2, redis.call('ZCARD', KEYZ)}""",
    # KEYS: entry hashes. ARGV: none. Returns their value, tags, created_ms, updated_ms,
    # expires_ms, one after the other (false for a missing field); a key of another type
    # gives false, false, false, false, 0.
    "kv_get": """
local out = {}
for _, key in ipairs(KEYS) do
  local got = redis.pcall('HMGET', key, 'value', 'tags', 'created_ms', 'updated_ms', 'expires_ms')
  if type(got) == 'table' and got.err then got = {false, false, false, false, 0} end
  for j = 1, 5 do out[#out + 1] = got[j] or false end
end
return out""",
    # enc() itself, for the test that compares it with naming.encode_name. ARGV: base, names...
    "kv_encode": _COMMON
    + """
local out = {}
for i = 2, #ARGV do out[#out + 1] = enc(ARGV[i]) end
return out""",
}

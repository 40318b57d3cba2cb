"""The Lua scripts of RedisStore: every write that touches a record and its indexes is one script, so
nothing is ever seen half-written."""

# Scripts write only after all their checks, and Redis refuses a script for OOM at its first
# write, never half-way: a script either writes everything or nothing.

# KEYS: task, all, owner, unfinished, vec, names
# ARGV: json, created_at, id, unfinished(0|1), has_vec(0|1), vec, name ('' for none)
# Returns 1 written, 0 the id exists, or the id of the owner's task that holds the name (nothing written).
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[7] ~= '' then
  local holder = redis.call('HGET', KEYS[6], ARGV[7])
  if holder and holder ~= ARGV[3] then return holder end
  redis.call('HSET', KEYS[6], ARGV[7], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
if ARGV[4] == '1' then redis.call('SADD', KEYS[4], ARGV[3]) end
if ARGV[5] == '1' then redis.call('SET', KEYS[5], ARGV[6]) else redis.call('DEL', KEYS[5]) end
return 1
"""
# KEYS: task, all, old owner, new owner, unfinished, vec, old names, new names
# ARGV: expected json, new json, id, created_at, unfinished(0|1), has_vec(0|1), vec, old name, new name,
#       name changes (0|1)   (names '' for none)
# Returns 1 written, 0 missing, -1 changed since it was read, or the id of the owner's task that holds
# the new name (nothing written).
SWAP = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[1] then return -1 end
if ARGV[10] == '1' then
  if ARGV[9] ~= '' then
    local holder = redis.call('HGET', KEYS[8], ARGV[9])
    if holder and holder ~= ARGV[3] then return holder end
  end
  if ARGV[8] ~= '' and redis.call('HGET', KEYS[7], ARGV[8]) == ARGV[3] then redis.call('HDEL', KEYS[7], ARGV[8]) end
  if ARGV[9] ~= '' then redis.call('HSET', KEYS[8], ARGV[9], ARGV[3]) end
end
redis.call('SET', KEYS[1], ARGV[2])
if KEYS[3] ~= KEYS[4] then redis.call('ZREM', KEYS[3], ARGV[3]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
if ARGV[5] == '1' then redis.call('SADD', KEYS[5], ARGV[3]) else redis.call('SREM', KEYS[5], ARGV[3]) end
if ARGV[6] == '1' then redis.call('SET', KEYS[6], ARGV[7]) end
return 1
"""
# KEYS: task, vec, lock, all, owner, unfinished, names
# ARGV: expected json ('' when none was read), id, name ('' for none)
# Returns 1 deleted, 0 missing, -1 changed since it was read. A missing record still loses its leftovers.
DELETE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
if cur then redis.call('ZREM', KEYS[5], ARGV[2]) end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[7], ARGV[3]) == ARGV[2] then redis.call('HDEL', KEYS[7], ARGV[3]) end
redis.call('SREM', KEYS[6], ARGV[2])
if cur then return 1 end
return 0
"""
# KEYS: task, owner, unfinished, names
# ARGV: expected json, id, created_at, unfinished(0|1), name ('' for none), json without the name
# (index rebuild, oldest first). Returns 0 changed since read, 1 indexed, 2 indexed but the name is an
# older task's: this record loses it, so that every name in a record is the one the index finds.
INDEX = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[2]) else redis.call('SREM', KEYS[3], ARGV[2]) end
if ARGV[5] ~= '' then
  local holder = redis.call('HGET', KEYS[4], ARGV[5])
  if holder and holder ~= ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[6])
    return 2
  end
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[2])
end
return 1
"""
# KEYS: task, names, holder's task   ARGV: expected json, new json, id, old name ('' for none), name,
#       expected holder ('' for none), expected holder json ('' when unreadable or gone), holder's new json
# Gives the task the name, taking it from the holder in the same step. Returns 1 written, 0 missing,
# -1 changed since read.
TAKE_NAME = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  return -1
end
local holder = redis.call('HGET', KEYS[2], ARGV[5])
if (holder or '') ~= ARGV[6] then return -1 end
if ARGV[6] ~= '' and ARGV[6] ~= ARGV[3] and ARGV[7] ~= '' then
  if redis.call('GET', KEYS[3]) ~= ARGV[7] then return -1 end
  redis.call('SET', KEYS[3], ARGV[8])
end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], ARGV[4]) == ARGV[3] then redis.call('HDEL', KEYS[2], ARGV[4]) end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
# KEYS: names, holder's task   ARGV: name, holder   -- a name left pointing at a task that is gone
FREE_STALE_NAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
# KEYS: index, task keys...   ARGV: ids (same order)   -- drops index entries whose record is gone
PRUNE = """
local n = 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then n = n + redis.call('ZREM', KEYS[1], id) end
end
return n
"""
# KEYS: task, vec   ARGV: bytes  -- only while the task exists, so a late worker leaves no orphan
PUT_VECTOR = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# KEYS: lock   ARGV: holder, ttl_ms
REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lock   ARGV: holder
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def flag(value: bool) -> str:
    """A boolean as the scripts' arguments take it."""
    return "1" if value else "0"

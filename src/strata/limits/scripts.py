"""The Lua scripts of rate limits and budgets (each runs atomically in Redis).

Arguments and replies are packed into single strings: redis-py spends far more
CPU encoding many arguments and parsing many reply elements than Lua spends
splitting one string. See ``rate`` and ``budget`` for what the scripts enforce.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.exceptions import NoScriptError

# ARGV: now (ms, or -1: Redis TIME), eps, "E tau cost" per key (one string: packing
# the arguments and the reply costs the client far less CPU), key expiry slack.
# Reply: "allowed retry_ms remaining reset_ms remaining reset_ms ...".
CHECK_SCRIPT = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local eps, slack = tonumber(ARGV[2]), tonumber(ARGV[4])
local spec = {}
for v in string.gmatch(ARGV[3], '%S+') do spec[#spec+1] = tonumber(v) end
local n = #KEYS
local tats, news = {}, {}
local allowed, retry = 1, 0
for i = 1, n do
  local e, tol, cost = spec[3*i-2], spec[3*i-1], spec[3*i]
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local inc = cost * e
  if inc > tol then inc = tol end
  local new = tat + inc
  local wait = new - tol - now
  if wait > eps then
    allowed = 0
    if wait > retry then retry = wait end
  end
  tats[i], news[i] = tat, new
end
local out = {allowed, math.ceil(retry)}
for i = 1, n do
  local e, tol = spec[3*i-2], spec[3*i-1]
  local tat = tats[i]
  if allowed == 1 then
    tat = news[i]
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil(tat - now) + slack)
    end
  end
  local rem = math.floor((tol - (tat - now)) / e + 1e-6)
  if rem < 0 then rem = 0 end
  out[2*i+1] = string.format('%d', rem)
  out[2*i+2] = string.format('%d', math.ceil(tat - now))
end
out[2] = string.format('%d', out[2])
return table.concat(out, ' ')
"""

# ARGV: now (as above), "delta_ms" per key (one string), key expiry slack.
CORRECT_SCRIPT = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local i = 0
for v in string.gmatch(ARGV[2], '%S+') do
  i = i + 1
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new = tat + tonumber(v)
  if new > now then
    redis.call('SET', KEYS[i], string.format('%.17g', new), 'PX',
               math.ceil(new - now) + tonumber(ARGV[3]))
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""

# ARGV: now_ms, id, worst, deadline_ms, record margin ms, record key prefix, sweep
# batch, "cap ttl_s" per hash (one string; cap -1: none). Reply, one string:
# "1 0 spent reserved ..." (before this reservation) or "0 i spent reserved" (denied
# by hash i). Amounts stay strings end to end: exact integers, whatever their size.
RESERVE_SCRIPT = """
local now = tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
for _, rid in ipairs(stale) do
  local rkey = ARGV[6] .. rid
  local rec = redis.call('GET', rkey)
  if rec and rec ~= 'x' then
    local amount = nil
    for part in string.gmatch(rec, '[^\\n]+') do
      if amount == nil then amount = part
      elseif amount ~= '0' then redis.call('HINCRBY', part, 'reserved', '-' .. amount) end
    end
    redis.call('SET', rkey, 'x', 'PX', ARGV[5])
  end
  redis.call('ZREM', KEYS[1], rid)
end
local worst = tonumber(ARGV[3])
local spec = {}
for v in string.gmatch(ARGV[8], '%S+') do spec[#spec+1] = v end
local n = #KEYS - 2
local out = {'1', '0'}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i+2], 'spent', 'reserved')
  local spent, reserved = v[1] or '0', v[2] or '0'
  local cap = tonumber(spec[2*i-1])
  if cap >= 0 and tonumber(spent) + tonumber(reserved) + worst > cap then
    return '0 ' .. i .. ' ' .. spent .. ' ' .. reserved
  end
  out[2*i+1], out[2*i+2] = spent, reserved
end
local rec = ARGV[3]
for i = 1, n do
  local key = KEYS[i+2]
  if worst > 0 then redis.call('HINCRBY', key, 'reserved', ARGV[3]) end
  redis.call('EXPIRE', key, spec[2*i])
  rec = rec .. '\\n' .. key
end
redis.call('SET', KEYS[2], rec, 'PX', math.floor(tonumber(ARGV[4]) - now) + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
return table.concat(out, ' ')
"""

# KEYS: pending, record, replay marker, hashes to charge. ARGV: id, actual, mode ('r':
# reserved in Redis, 'l': in memory while Redis was down), marker ttl, "ttl_s" per
# hash. Reply: "0" (settled before) or "1 spent reserved ..." (after).
SETTLE_SCRIPT = """
if ARGV[3] == 'l' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then return '0' end
elseif ARGV[3] == 'r' then
  local rec = redis.call('GET', KEYS[2])
  if not rec then return '0' end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  if rec ~= 'x' then
    local amount = nil
    for part in string.gmatch(rec, '[^\\n]+') do
      if amount == nil then amount = part
      elseif amount ~= '0' then redis.call('HINCRBY', part, 'reserved', '-' .. amount) end
    end
  end
end
local ttls = {}
for v in string.gmatch(ARGV[5], '%S+') do ttls[#ttls+1] = v end
local out = {'1'}
for i = 4, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  out[#out+1] = v[1]
  out[#out+1] = v[2] or '0'
  redis.call('EXPIRE', KEYS[i], ttls[i-3])
end
return table.concat(out, ' ')
"""

SHAS = {
    s: hashlib.sha1(s.encode()).hexdigest()
    for s in (CHECK_SCRIPT, CORRECT_SCRIPT, RESERVE_SCRIPT, SETTLE_SCRIPT)
}


async def evalsha(redis: Any, script: str, keys: list[str], args: list[Any]) -> Any:
    """Run ``script`` by its SHA; load it and retry once if Redis lost it (a restart,
    SCRIPT FLUSH)."""
    sha = SHAS[script]
    try:
        return await redis.evalsha(sha, len(keys), *keys, *args)
    except NoScriptError:
        await redis.script_load(script)
        return await redis.evalsha(sha, len(keys), *keys, *args)

--[[
  Renews a lease only for its owner.

  Input:
    KEYS.lease    the lease

    ARGV.owner    the owner
    ARGV.ttl_ms   the new ttl (ms)

  Output:
    1 when renewed, 0 when someone else holds it or it expired
]]
if redis.call('GET', KEY.lease) ~= ARG.owner then return 0 end
redis.call('PEXPIRE', KEY.lease, ARG.ttl_ms)
return 1

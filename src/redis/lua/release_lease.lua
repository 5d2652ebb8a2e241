--[[
  Releases a lease only for its owner.

  Input:
    KEYS.lease    the lease

    ARGV.owner    the owner

  Output:
    1 when released, 0 when someone else holds it or it expired
]]
if redis.call('GET', KEY.lease) == ARG.owner then return redis.call('DEL', KEY.lease) end
return 0

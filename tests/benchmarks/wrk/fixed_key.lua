-- Every request carries the same Idempotency-Key and body: replays only (the
-- runner sends the first request before the load starts).
--   wrk -t2 -c8 -d8s --latency -s fixed_key.lua URL -- TOKEN KEY

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local common = require("common")

function init(args)
  common.prepare(args)
  assert(args[2], "fixed_key.lua needs the key: -- TOKEN KEY")
  wrk.headers["Idempotency-Key"] = args[2]
end

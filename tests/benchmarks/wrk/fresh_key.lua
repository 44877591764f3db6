-- Every request carries a new UUID4 Idempotency-Key: first requests only.
--   wrk -t2 -c8 -d8s --latency -s fresh_key.lua URL -- TOKEN

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local common = require("common")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local counter = 0

local function hex16()
  return math.random(0, 0xffff)
end

-- Random bits from a per-thread seed, then the thread and a counter in the last
-- group, so that no two requests of one run share a key.
local function uuid4()
  counter = counter + 1
  return string.format(
    "%04x%04x-%04x-4%03x-%04x-%04x%08x",
    hex16(), hex16(), hex16(), math.random(0, 0xfff),
    0x8000 + math.random(0, 0x3fff), (thread_id or 0) % 0x10000, counter
  )
end

function init(args)
  common.prepare(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919 + math.floor(os.clock() * 1e6))
  for _ = 1, 10 do math.random() end
end

function request()
  wrk.headers["Idempotency-Key"] = uuid4()
  return wrk.format()
end

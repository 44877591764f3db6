-- Shared by fresh_key.lua and fixed_key.lua: a JSON POST, the body the runner
-- sends too, and the Authorization header when a token is given.
--   wrk ... -s SCRIPT URL -- TOKEN [KEY]     TOKEN "-" for an anonymous request

local M = {}

M.body = '{"name":"widget","quantity":2,"price":"9.99"}'

function M.prepare(args)
  wrk.method = "POST"
  wrk.body = M.body
  wrk.headers["Content-Type"] = "application/json"
  local token = args[1]
  if token and token ~= "-" then
    wrk.headers["Authorization"] = "Token " .. token
  end
end

return M

-- wrk script: PUT /v1/txn with 10 `set` operations of 64-byte values (the values of
-- consulate_put.lua), each request on its own keys.
local counter = 0
local ntid = 0
local value = "dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dg=="
function setup(thread) ntid = ntid + 1; thread:set("tid", ntid) end
wrk.method = "PUT"
function request()
  counter = counter + 1
  local ops = {}
  for i = 1, 10 do
    ops[i] = string.format('{"KV":{"Verb":"set","Key":"txn/%d/%d/%d","Value":"%s"}}', tid or 0, counter, i, value)
  end
  return wrk.format(nil, "/v1/txn", nil, "[" .. table.concat(ops, ",") .. "]")
end

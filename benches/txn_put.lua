-- wrk script: PUT /v1/txn with 10 `set` operations of 64-byte values (the values of
-- consulate_put.lua), each request on its own keys. With an argument (`wrk ... -- KEYS`),
-- the ten keys are drawn from KEYS existing keys `bench/0000000`.. instead, as
-- consulate_put.lua does, so the state stays the same size.
local counter = 0
local ntid = 0
local space = nil
local value = "dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dnZ2dg=="
function setup(thread) ntid = ntid + 1; thread:set("tid", ntid) end
function init(args)
  math.randomseed(os.time() + (tid or 0))
  if args[1] then space = tonumber(args[1]) end
end
wrk.method = "PUT"
function request()
  counter = counter + 1
  local ops = {}
  for i = 1, 10 do
    local key
    if space then
      key = string.format("bench/%07d", math.random(0, space - 1))
    else
      key = string.format("txn/%d/%d/%d", tid or 0, counter, i)
    end
    ops[i] = string.format('{"KV":{"Verb":"set","Key":"%s","Value":"%s"}}', key, value)
  end
  return wrk.format(nil, "/v1/txn", nil, "[" .. table.concat(ops, ",") .. "]")
end

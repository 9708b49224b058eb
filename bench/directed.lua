-- wrk script: directed messages to 1,000 distinct users (durable, fsync'd before the answer).
-- Usage: wrk -t2 -c64 -d10s -s bench/directed.lua http://127.0.0.1:PORT  (KEY=admin key in env)
local key = os.getenv("KEY") or "bench-key"
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
request = function()
  n = n + 1
  local body = string.format('{"content":{"n":%d,"text":"directed benchmark payload"},"receiver":["user%d"],"title":"bench"}', n, n % 1000)
  return wrk.format(nil, "/api/v1/messages", nil, body)
end
response = function(status)
  if status ~= 201 then io.stderr:write("status " .. status .. "\n") end
end

-- Paced POST /reviews load for bench/e2e_latency.py (wrk, one thread, many connections).
--
-- Each request is a new review of a course of its own, ids E2E_BASE, E2E_BASE+1, ...
-- Requests follow a fixed schedule (slot k due at start + k/E2E_RATE s), so the rate does not
-- sag when answers slow down, as long as enough connections are open. Every 201 answer is
-- written to E2E_OUT as "<review id> <answered epoch ms>"; other statuses as "! <status>".
-- The thread stops once E2E_COUNT answers have arrived (wrk itself runs for its -d).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } timeval;
  int gettimeofday(timeval *tv, void *tz);
]]
local tv = ffi.new("timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local rate = tonumber(os.getenv("E2E_RATE"))
local base = tonumber(os.getenv("E2E_BASE"))
local count = tonumber(os.getenv("E2E_COUNT"))
local out_path = os.getenv("E2E_OUT")
-- the writer token from its file (E2E_TOKEN_FILE): never in an argument or the environment
local token_file = assert(io.open(os.getenv("E2E_TOKEN_FILE"), "r"))
local token = token_file:read("*l"):gsub("%s+$", "")
token_file:close()

local sent, slot, answers, start, out = 0, -1, 0, nil, nil
local template = '{"id":%d,"title":"","content":"","rating":%s,'
  .. '"created":"%s","modified":"%s",'
  .. '"user":{"title":"Bench","name":"Bench","display_name":"Bench"},'
  .. '"course":{"id":%d,"title":"Bench","url":"/bench/"}}'
local ratings = { "5.0", "5.0", "5.0", "4.5", "4.0" }
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }

function init(args)
  out = io.open(out_path, "w")
end

-- Reserve the next slot of the schedule (wrk asks before every request, the first ones too).
function delay()
  if start == nil then start = now_ms() end
  slot = slot + 1
  if slot >= count then return 3600000 end -- all slots taken: idle until the last answers

  local wait = start + slot * 1000 / rate - now_ms()
  if wait < 0 then return 0 end
  return wait
end

function request()
  if start == nil then start = now_ms() end
  local id = base + sent
  sent = sent + 1
  local day = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local body = string.format(template, id, ratings[sent % 5 + 1], day, day, id)
  return wrk.format("POST", "/reviews", headers, body)
end

function response(status, hdrs, body)
  if status == 201 then
    out:write(body:match('"id":(%d+)'), " ", string.format("%.3f", now_ms()), "\n")
  else
    out:write("! ", status, "\n")
  end
  answers = answers + 1
  if answers >= count then
    out:flush()
    wrk.thread:stop()
  end
end

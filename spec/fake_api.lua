--- A local stand-in of the model APIs, on loopback, for driving the real agent CLIs offline:
-- Anthropic's POST /v1/messages and OpenAI's POST /v1/responses, both answered as server-sent
-- events. It runs on the spec's own luv loop, so it answers while H.run waits for coral.
--   local api = fake_api.start(function(req) return reply end)
--     req:   { method, path, headers (lower-case names), body (string), json (decoded or nil),
--              text (every text the request carries, concatenated: prompt, system, inputs) }
--     reply: { text = "answer" }                           a streamed answer
--            { status = 429|500|..., error = "message", kind = "rate_limit_error", retry_after = s }
--            { hang = true }                               accept and never answer
--            { tool = { name = "Write", input = {...} } }   (anthropic) a call of one of the CLI's tools;
--              the CLI runs it and asks again with its result: req.after_tool is then true
--     req.system: the text of the request's system prompt (Claude Code's names its working dir);
--     req.conversation: every text of its messages; req.tool_results: how many tool results they hold
--            { text = "answer", pace = s }                 the answer in several pieces, `pace` seconds apart
--              (a CLI then sees it arrive over time: its usage can be read mid-stream)
--   api.url, api.port, api.requests (every request seen), api:close()
--   fake_api.start(handler, opts): opts.slow = s (every model reply waits s seconds before it
--     starts: requests overlap), opts.max_in_flight = N (a model request that arrives while N
--     are being answered gets a 429 at once, in the API's own error shape, with Retry-After
--     opts.retry_after (default 1) and no x-should-retry: the CLI's own retry policy applies);
--     api.rejected counts those 429s, api.max_concurrency is the most requests seen at once
--     (the rejected arrival included), api.in_flight the requests being answered now.
local cjson = require "cjson"
local uv = require "luv"

local M = {}

local STATUS_TEXT = { [200] = "OK", [400] = "Bad Request", [401] = "Unauthorized", [404] = "Not Found",
  [429] = "Too Many Requests", [500] = "Internal Server Error", [529] = "Overloaded" }

-- Debian's lua-cjson writes an empty table as {}; the APIs send [] for empty lists.
local EMPTY = "\0empty-list"

local function encode(data)
  return (cjson.encode(data):gsub('"\\u0000empty%-list"', "[]"))
end

-- Each streamed message has an id of its own, as the API's have (a CLI may tell them apart by it).
local message_count = 0
local function message_id()
  message_count = message_count + 1
  return "msg_coral_" .. message_count
end

local function sse(event, data)
  return "event: " .. event .. "\ndata: " .. encode(data) .. "\n\n"
end

-- Every string inside a decoded JSON value, so a reply can be chosen by what the prompt says.
local function strings_of(v, out)
  if type(v) == "string" then out[#out + 1] = v
  elseif type(v) == "table" then for _, x in pairs(v) do strings_of(x, out) end end
  return out
end

-- The text of the last user turn: what the CLI was asked this time (system prompts and tool
-- lists are large and the same in every request).
local function last_user_text(json)
  if type(json) ~= "table" then return "" end
  local list = json.messages or json.input
  if type(list) ~= "table" then return "" end
  for i = #list, 1, -1 do
    local m = list[i]
    if type(m) == "table" and m.role == "user" then return table.concat(strings_of(m.content, {}), "\n") end
  end
  return ""
end

-- Does the last message of the request carry a tool's result (the CLI ran the tool we asked for)?
local function after_tool(json)
  local list = type(json) == "table" and json.messages
  local last = type(list) == "table" and list[#list]
  if type(last) ~= "table" or type(last.content) ~= "table" then return false end
  for _, block in ipairs(last.content) do
    if type(block) == "table" and block.type == "tool_result" then return true end
  end
  return false
end

-- A streamed tool call: one tool_use block, its input as one JSON delta, stop_reason tool_use.
local function anthropic_tool_stream(reply, req)
  local model = req.json and req.json.model or "claude-test"
  local id = "toolu_coral_" .. tostring(#(req.body or ""))
  return table.concat {
    sse("message_start", { type = "message_start", message = {
      id = message_id(), type = "message", role = "assistant", model = model, content = EMPTY,
      stop_reason = cjson.null, stop_sequence = cjson.null,
      usage = { input_tokens = 10, output_tokens = 1, cache_creation_input_tokens = 0, cache_read_input_tokens = 0 } } }),
    sse("content_block_start", { type = "content_block_start", index = 0,
      content_block = { type = "tool_use", id = id, name = reply.tool.name, input = {} } }),
    sse("content_block_delta", { type = "content_block_delta", index = 0,
      delta = { type = "input_json_delta", partial_json = cjson.encode(reply.tool.input) } }),
    sse("content_block_stop", { type = "content_block_stop", index = 0 }),
    sse("message_delta", { type = "message_delta", delta = { stop_reason = "tool_use", stop_sequence = cjson.null },
                           usage = { output_tokens = 10 } }),
    sse("message_stop", { type = "message_stop" }),
  }
end

-- The text of a paced answer in up to 4 pieces (each its own delta event).
local function pieces(text, paced)
  if not paced or #text < 4 then return { text } end
  local out, size = {}, math.ceil(#text / 4)
  for i = 1, #text, size do out[#out + 1] = text:sub(i, i + size - 1) end
  return out
end

-- The usage the stand-in reports for a text answer: 4 bytes a token, of the request's body
-- and of the answer (a spec compares what coral recorded with it: M.usage_of).
local function text_usage(reply, req)
  return math.max(1, #(req.body or "") // 4), math.max(1, #reply.text // 4)
end

-- A streamed answer, as a list of SSE events (written one by one when paced).
local function anthropic_stream(reply, req)
  if reply.tool then return { anthropic_tool_stream(reply, req) } end
  local model = req.json and req.json.model or "claude-test"
  local usage_in, out_tokens = text_usage(reply, req)
  local events = {
    sse("message_start", { type = "message_start", message = {
      id = message_id(), type = "message", role = "assistant", model = model, content = EMPTY,
      stop_reason = cjson.null, stop_sequence = cjson.null,
      usage = { input_tokens = usage_in, output_tokens = 1, cache_creation_input_tokens = 0,
                cache_read_input_tokens = 0 } } }),
    sse("content_block_start", { type = "content_block_start", index = 0,
                                 content_block = { type = "text", text = "" } }),
  }
  for _, piece in ipairs(pieces(reply.text, reply.pace)) do
    events[#events + 1] = sse("content_block_delta", { type = "content_block_delta", index = 0,
                                                       delta = { type = "text_delta", text = piece } })
  end
  events[#events + 1] = sse("content_block_stop", { type = "content_block_stop", index = 0 })
  events[#events + 1] = sse("message_delta", { type = "message_delta",
    delta = { stop_reason = "end_turn", stop_sequence = cjson.null }, usage = { output_tokens = out_tokens } })
  events[#events + 1] = sse("message_stop", { type = "message_stop" })
  return events
end

local function openai_stream(reply, req)
  local model = req.json and req.json.model or "gpt-test"
  local usage_in, out_tokens = text_usage(reply, req)
  local usage = { input_tokens = usage_in, input_tokens_details = { cached_tokens = 0 },
                  output_tokens = out_tokens, output_tokens_details = { reasoning_tokens = 0 } }
  usage.total_tokens = usage.input_tokens + usage.output_tokens
  local item = { type = "message", role = "assistant", id = "msg_coral_test", status = "completed",
                 content = { { type = "output_text", text = reply.text, annotations = EMPTY } } }
  local events = {
    sse("response.created", { type = "response.created", response = { id = "resp_coral_test", model = model } }),
    sse("response.output_item.added", { type = "response.output_item.added", output_index = 0,
      item = { type = "message", role = "assistant", id = "msg_coral_test", status = "in_progress", content = EMPTY } }),
  }
  for _, piece in ipairs(pieces(reply.text, reply.pace)) do
    events[#events + 1] = sse("response.output_text.delta", { type = "response.output_text.delta", output_index = 0,
                                                              content_index = 0, item_id = "msg_coral_test", delta = piece })
  end
  events[#events + 1] = sse("response.output_item.done", { type = "response.output_item.done", output_index = 0, item = item })
  events[#events + 1] = sse("response.completed", { type = "response.completed", response = { id = "resp_coral_test",
                            model = model, status = "completed", output = { item }, usage = usage } })
  return events
end

local function error_body(reply, openai)
  if openai and reply.kind == "rate_limit_error" then
    -- OpenAI's shape of a rate limit: type names the limit, code says what it is
    return cjson.encode { error = { message = reply.error or "rate limit reached", type = "requests",
                                    param = cjson.null, code = "rate_limit_exceeded" } }
  end
  if openai then
    return cjson.encode { error = { message = reply.error or "error", type = reply.kind or "server_error",
                                    code = reply.kind or cjson.null } }
  end
  return cjson.encode { type = "error", error = { type = reply.kind or "api_error", message = reply.error or "error" } }
end

local function response(status, headers, body)
  local lines = { string.format("HTTP/1.1 %d %s", status, STATUS_TEXT[status] or "Status") }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  lines[#lines + 1] = "Connection: close"
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

-- Parses one request out of `buf`; returns req and the rest, or nil while incomplete.
local function parse_request(buf)
  local head_end = buf:find("\r\n\r\n", 1, true)
  if not head_end then return nil end
  local head = buf:sub(1, head_end - 1)
  local method, path = head:match("^(%u+) (%S+) HTTP/1%.%d")
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
  local rest = buf:sub(head_end + 4)
  local body
  if headers["transfer-encoding"] and headers["transfer-encoding"]:lower():find("chunked") then
    local parts, pos = {}, 1
    while true do
      local line_end = rest:find("\r\n", pos, true)
      if not line_end then return nil end
      local size = tonumber(rest:sub(pos, line_end - 1):match("^%x+"), 16)
      if not size then return nil end
      if size == 0 then body = table.concat(parts); break end
      if #rest < line_end + 1 + size + 2 then return nil end
      parts[#parts + 1] = rest:sub(line_end + 2, line_end + 1 + size)
      pos = line_end + 2 + size + 2
    end
  else
    local n = tonumber(headers["content-length"] or "0") or 0
    if #rest < n then return nil end
    body = rest:sub(1, n)
  end
  return { method = method, path = path, headers = headers, body = body }
end

local OPTIONS = { slow = true, max_in_flight = true, retry_after = true }

--- Starts the server on 127.0.0.1 (a free port); `handler(req)` returns the reply. opts: see
-- the top of this file.
function M.start(handler, opts)
  opts = opts or {}
  for k in pairs(opts) do assert(OPTIONS[k], "fake_api.start: unknown option " .. tostring(k)) end
  local api = { requests = {}, clients = {}, timers = {}, rejected = 0, in_flight = 0, max_concurrency = 0 }
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  api.port = server:getsockname().port
  api.url = "http://127.0.0.1:" .. api.port

  -- fn after `seconds` (now when nil or 0), on a timer api.close() closes if it is still due
  local function later(seconds, fn)
    if not seconds or seconds <= 0 then return fn() end
    local timer = uv.new_timer()
    api.timers[timer] = true
    timer:start(math.floor(seconds * 1000), 0, function()
      api.timers[timer] = nil
      timer:close()
      fn()
    end)
  end

  local function finish(client, done)
    if done then done() end
    if client:is_closing() then return end
    client:shutdown(function()
      api.clients[client] = nil
      if not client:is_closing() then client:close() end
    end)
  end

  -- Writes `parts` one after the other, `pace` seconds apart, then ends the reply.
  local function send(client, parts, pace, done)
    local i = 0
    local function step()
      i = i + 1
      if client:is_closing() then return done() end   -- the CLI went away
      if i > #parts then return finish(client, done) end
      client:write(parts[i])
      later(i < #parts and pace or 0, step)
    end
    step()
  end

  local function answer(client, req)
    local openai = req.path:find("/responses", 1, true) ~= nil
    local ok, json = pcall(cjson.decode, req.body or "")
    req.json = ok and json or nil
    req.text = last_user_text(req.json)
    req.after_tool = after_tool(req.json)
    -- every text of the conversation so far, and how many tool results it holds
    req.conversation = table.concat(strings_of(type(req.json) == "table" and req.json.messages or nil, {}), "\n")
    req.tool_results = select(2, (req.body or ""):gsub('"type":"tool_result"', ""))
    req.system = table.concat(strings_of(type(req.json) == "table" and req.json.system or nil, {}), "\n")
    api.requests[#api.requests + 1] = req
    local reply
    if req.method == "HEAD" or (req.method == "GET" and req.path == "/") then
      -- Claude Code checks that the base URL answers before its first request.
      client:write(response(200, {}, req.method == "GET" and "" or nil))
      finish(client)
      return
    elseif req.method ~= "POST" or not (req.path:find("/v1/messages", 1, true) or openai) then
      reply = { status = 404, error = "no such endpoint in coral's test API: " .. req.method .. " " .. req.path,
                kind = "not_found_error" }
    elseif req.path:find("count_tokens", 1, true) then
      client:write(response(200, { ["Content-Type"] = "application/json" }, cjson.encode { input_tokens = 10 }))
      finish(client)
      return
    else
      -- a model request: in flight until its reply is written (or its client goes)
      api.max_concurrency = math.max(api.max_concurrency, api.in_flight + 1)
      if opts.max_in_flight and api.in_flight >= opts.max_in_flight then
        api.rejected = api.rejected + 1
        reply = { status = 429, kind = "rate_limit_error", retry_after = opts.retry_after or 1, should_retry = true,
                  error = "Number of concurrent connections has exceeded your rate limit. Please try again later." }
        req.rejected = true
      else
        reply = handler(req) or { text = "" }
      end
    end
    req.reply = reply
    if reply.hang then return end
    local counted = not req.rejected and reply.status == nil
    if counted then api.in_flight = api.in_flight + 1 end
    local function done()
      if counted then api.in_flight, counted = api.in_flight - 1, false end
    end
    if reply.status and reply.status ~= 200 then
      local headers = { ["Content-Type"] = "application/json" }
      if reply.retry_after then headers["Retry-After"] = tostring(reply.retry_after) end
      -- x-should-retry: false unless the reply says otherwise (a 429 for overload leaves the
      -- retrying to the CLI's own policy, as the API does)
      if not openai and not reply.should_retry then headers["x-should-retry"] = "false" end
      client:write(response(reply.status, headers, error_body(reply, openai)))
      return finish(client, done)
    end
    later(reply.status == nil and opts.slow or 0, function()
      local events = openai and openai_stream(reply, req) or anthropic_stream(reply, req)
      local head = response(200, { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache" })
      if reply.pace then
        table.insert(events, 1, head)
        send(client, events, reply.pace, done)
      else
        send(client, { head .. table.concat(events) }, nil, done)
      end
    end)
  end

  assert(server:listen(64, function(err)
    assert(not err, err)
    local client = uv.new_tcp()
    server:accept(client)
    api.clients[client] = true
    local buf = ""
    client:read_start(function(rerr, chunk)
      if rerr or not chunk then
        api.clients[client] = nil
        if not client:is_closing() then client:close() end
        return
      end
      buf = buf .. chunk
      local req = parse_request(buf)
      if req then
        buf = ""
        client:read_stop()
        local ok, e = pcall(answer, client, req)
        if not ok then
          client:write(response(500, { ["Content-Type"] = "text/plain" }, "coral test API: " .. tostring(e)))
          finish(client)
        end
      end
    end)
  end))
  api.server = server

  --- Requests to one API: "anthropic" (/v1/messages) or "openai" (/responses).
  function api.seen(_, which)
    local out = {}
    for _, r in ipairs(api.requests) do
      local openai = r.path:find("/responses", 1, true) ~= nil
      local model_api = r.method == "POST" and (openai or r.path:find("/v1/messages", 1, true))
      if model_api and (which == "openai") == openai and not r.path:find("count_tokens", 1, true) then
        out[#out + 1] = r
      end
    end
    return out
  end

  function api.close()
    for t in pairs(api.timers) do
      if not t:is_closing() then t:close() end
    end
    api.timers = {}
    for c in pairs(api.clients) do
      if not c:is_closing() then c:close() end
    end
    api.clients = {}
    if not server:is_closing() then server:close() end
    uv.run("nowait")
  end
  return api
end

return M

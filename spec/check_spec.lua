-- coral.check: strict option tables and allowed words, raising at the caller's caller (the
-- recipe line), and where(): the file:line a call came from.
require("spec.helper").guard(_ENV)
local check = require "coral.check"

local SPEC = { name = "string", count = "integer", ratio = "number", items = "list",
               cmd = "string|list", flag = "boolean", fn = "function" }
local KNOWN = "(known: cmd, count, flag, fn, items, name, ratio)"

-- An API that checks its options as a recipe-facing call does: level 2 blames its caller.
local function api(opts) check.options("my.api", opts, SPEC, 2) end
local function pick(mode) check.one_of("my.api", "mode", mode, { "fast", "slow" }, 2) end

-- Runs f and returns its error text (f must fail).
local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)   -- a user's mistake is a coral.check.UserError: "where: message"
end

local function here() return debug.getinfo(2, "l").currentline end

describe("coral.check", function()
  describe("options", function()
    it("accepts nil, an empty table and any mix of known options of the right types", function()
      assert.has_no.errors(function() api(nil) end)
      assert.has_no.errors(function() api({}) end)
      assert.has_no.errors(function()
        api { name = "x", count = 3, ratio = 0.5, items = { "a" }, cmd = "ls", flag = false, fn = print }
      end)
      assert.has_no.errors(function() api { ratio = 2, items = {}, cmd = { "ls", "-l" } } end)
    end)

    it("rejects an unknown option and lists the known ones, at the caller's line", function()
      local line
      local err = err_of(function() line = here(); api { nmae = "x" } end)
      assert.are.equal(string.format("spec/check_spec.lua:%d: my.api: unknown option 'nmae' %s", line,
        KNOWN:gsub("^%(", "(did you mean 'name'? ")), err)
    end)

    it("names a key that is not a string", function()
      local err = err_of(function() api { "positional" } end)
      assert.matches("my.api: unknown option '1' %(known: ", err)
    end)

    it("rejects a value of the wrong type, naming the option, the wanted and the given type", function()
      local line
      local err = err_of(function() line = here(); api { count = "3" } end)
      assert.are.equal(string.format("spec/check_spec.lua:%d: my.api: option 'count' must be integer, got string", line), err)
      assert.matches("my.api: option 'count' must be integer, got float$", err_of(api, { count = 1.5 }))
      assert.matches("my.api: option 'count' must be integer, got float$", err_of(api, { count = 2.0 }))
      assert.matches("my.api: option 'ratio' must be number, got string$", err_of(api, { ratio = "1" }))
      assert.matches("my.api: option 'items' must be list, got string$", err_of(api, { items = "a" }))
      assert.matches("my.api: option 'name' must be string, got integer$", err_of(api, { name = 7 }))
      assert.matches("my.api: option 'name' must be string, got float$", err_of(api, { name = 7.5 }))
      assert.matches("my.api: option 'flag' must be boolean, got string$", err_of(api, { flag = "yes" }))
      assert.matches("my.api: option 'cmd' must be string or list, got boolean$", err_of(api, { cmd = true }))
    end)

    it("rejects options that are not a table", function()
      local line
      local err = err_of(function() line = here(); api "name=x" end)
      assert.are.equal(string.format("spec/check_spec.lua:%d: my.api: options must be a table, got string", line), err)
      assert.matches("my.api: options must be a table, got boolean$", err_of(api, true))
    end)

    it("raises at the level it is given", function()
      -- level 1: the function that called options
      local line
      local function direct(opts)
        line = here(); check.options("direct", opts, SPEC, 1)
      end
      local err = err_of(direct, { x = 1 })
      assert.are.equal(string.format("spec/check_spec.lua:%d: direct: unknown option 'x' %s", line, KNOWN), err)
      -- level 3: two calls above the one that checks
      local function wrapped(opts) check.options("wrapped", opts, SPEC, 3) end
      local function via(opts) wrapped(opts) end
      err = err_of(function() line = here(); via { y = 1 } end)
      assert.are.equal(string.format("spec/check_spec.lua:%d: wrapped: unknown option 'y' %s", line, KNOWN), err)
    end)
  end)

  describe("one_of", function()
    it("accepts an allowed word", function()
      assert.has_no.errors(function() pick("fast") end)
      assert.has_no.errors(function() pick("slow") end)
    end)

    it("rejects any other value, listing the allowed ones, at the caller's line", function()
      local line
      local err = err_of(function() line = here(); pick("medium") end)
      assert.are.equal(string.format("spec/check_spec.lua:%d: my.api: mode must be one of fast, slow, got 'medium'", line), err)
      assert.matches("my.api: mode must be one of fast, slow, got 'nil'$", err_of(pick, nil))
      assert.matches("my.api: mode must be one of fast, slow, got 'FAST'$", err_of(pick, "FAST"))
      assert.matches("my.api: mode must be one of fast, slow, got '1'$", err_of(pick, 1))
    end)
  end)

  describe("where", function()
    -- declare() stands for coral.task: it records where it was called from. (Not as a tail
    -- call: a tail call leaves no frame of the function that asks.)
    local function declare(level) local w = check.where(level); return w end

    it("gives the file:line that called the function that asks", function()
      local line = here(); local w = declare(1)
      assert.are.equal("spec/check_spec.lua:" .. line, w)
      line = here(); w = declare()
      assert.are.equal("spec/check_spec.lua:" .. line, w, "level 1 is the default")
    end)

    it("goes up `level` frames", function()
      local line
      local function own() line = here(); local w = check.where(0); return w end
      local w = own()
      assert.are.equal("spec/check_spec.lua:" .. line, w)
      local function middle() local w2 = declare(2); return w2 end
      line = here(); w = middle()
      assert.are.equal("spec/check_spec.lua:" .. line, w)
    end)

    it("says ? when the frame is not Lua code or does not exist", function()
      assert.are.equal("?", check.where(1000))
      local ok, w = pcall(check.where, 0)   -- the frame above where() is pcall, a C function
      assert.is_true(ok)
      assert.are.equal("?", w)
    end)
  end)
end)

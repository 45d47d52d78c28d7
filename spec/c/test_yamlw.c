/* C tests of coral.yamlw under the sanitizers: its buffers (the text kept between calls, the
 * keys of the maps being written) growing, errors raised in the middle of a text (what was
 * built left to the collector, the next call's buffer its own), a key's __tostring that writes
 * YAML itself, and deep nesting up to the limit. */
#include "ctest.h"

static void grows_and_keeps_its_buffer(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local yaml = require 'coral.records.yaml'\n"
    "for _, n in ipairs { 0, 1, 100, 3000, 20000, 10 } do\n"
    "  local t, wide = {}, {}\n"
    "  for i = 1, n do\n"
    "    t[i] = { id = 't' .. i, n = i, x = i / 7, s = string.rep('a\"\\1', i % 50) }\n"
    "    wide['k' .. i] = i\n"
    "  end\n"
    "  local text = yaml.encode({ tasks = setmetatable(t, yaml.list_mt), wide = wide }, 'c')\n"
    "  local back = assert(yaml.decode(text))\n"
    "  assert(#back.tasks == n, n)\n"
    "  if n > 0 then assert(back.tasks[n].x == n / 7 and back.wide['k' .. n] == n) end\n"
    "end\n"));
  ctest_host_close(&h);
}

static void errors_leave_nothing_behind(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local yaml = require 'coral.records.yaml'\n"
    "local big = {}\n"
    "for i = 1, 3000 do big['k' .. i] = { string.rep('x', 100), i } end\n"
    "big.zzz = print\n"
    "for _ = 1, 20 do assert(not pcall(yaml.encode, big)) end\n"
    "local deep = {}\n"
    "local t = deep\n"
    "for _ = 1, 1100 do t.next = {}; t = t.next end\n"
    "assert(not pcall(yaml.encode, deep))\n"
    "local cycle = {}\n"
    "cycle[1] = cycle\n"
    "assert(not pcall(yaml.encode, cycle))\n"
    "collectgarbage()\n"
    "assert(yaml.encode { a = 1 } == 'a: 1\\n')\n"));
  ctest_host_close(&h);
}

static void a_key_that_writes_yaml_itself(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local yaml = require 'coral.records.yaml'\n"
    "local key = setmetatable({}, { __tostring = function()\n"
    "  return (yaml.encode({ inner = string.rep('y', 5000) }):gsub('\\n', ''))\n"
    "end })\n"
    "local text = yaml.encode { [key] = 1, a = string.rep('z', 3000) }\n"
    "assert(text == 'a: \"' .. string.rep('z', 3000) .. '\"\\n\"inner: \\\\\"' .. string.rep('y', 5000) .. '\\\\\"\": 1\\n', text)\n"
    "local bad = setmetatable({}, { __tostring = function() error('no text') end })\n"
    "assert(not pcall(yaml.encode, { [bad] = 1 }))\n"
    "assert(yaml.encode { b = 2 } == 'b: 2\\n')\n"));
  ctest_host_close(&h);
}

int main(void) {
  RUN(grows_and_keeps_its_buffer);
  RUN(errors_leave_nothing_behind);
  RUN(a_key_that_writes_yaml_itself);
  CTEST_EXIT();
}

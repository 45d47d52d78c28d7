/* C tests of coral.jsonw under the sanitizers: its buffer growing past what it keeps between
 * calls, errors raised in the middle of a text (the buffer left to the collector), escapes of
 * every byte, and numbers read back by lua-cjson. */
#include "ctest.h"

static void grows_and_keeps_its_buffer(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local jsonw, cjson = require 'coral.jsonw', require 'cjson'\n"
    "for _, n in ipairs { 0, 1, 100, 300, 5000, 100000, 10 } do\n"
    "  local t = {}\n"
    "  for i = 1, n do t[i] = { id = 't' .. i, n = i, x = i / 7, s = string.rep('ab', i % 50) } end\n"
    "  local text = jsonw.encode({ tasks = t }, { tasks = true })\n"
    "  local back = cjson.decode(text)\n"
    "  assert(#back.tasks == n, n)\n"
    "  if n > 0 then assert(back.tasks[n].x == n / 7 and back.tasks[n].id == 't' .. n) end\n"
    "end\n"));
  ctest_host_close(&h);
}

static void errors_leave_nothing_behind(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local jsonw = require 'coral.jsonw'\n"
    "local big = {}\n"
    "for i = 1, 2000 do big[i] = string.rep('x', 100) end\n"
    "big[2001] = print\n"
    "for _ = 1, 20 do assert(not pcall(jsonw.encode, big)) end\n"
    "local deep = {}\n"
    "local t = deep\n"
    "for _ = 1, 1100 do t.next = {}; t = t.next end\n"
    "assert(not pcall(jsonw.encode, deep))\n"
    "collectgarbage()\n"
    "assert(jsonw.encode { a = 1 } == '{\"a\":1}')\n"));
  ctest_host_close(&h);
}

static void escapes_every_byte(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local jsonw, cjson = require 'coral.jsonw', require 'cjson'\n"
    "local bytes = {}\n"
    "for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end\n"
    "local s = table.concat(bytes)\n"
    "assert(cjson.decode(jsonw.encode(s)) == s)\n"
    "assert(cjson.decode(jsonw.encode { [s] = s })[s] == s)\n"));
  ctest_host_close(&h);
}

int main(void) {
  RUN(grows_and_keeps_its_buffer);
  RUN(errors_leave_nothing_behind);
  RUN(escapes_every_byte);
  CTEST_EXIT();
}

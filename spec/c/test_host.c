/* C tests of the host: state setup, embedded modules, callback errors, shutdown. */
#include "ctest.h"

static void opens_embedded_modules(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L, "assert(require('coral').version == require('coral.host').version)"));
  CHECK(ctest_lua(h.L, "assert(require('cjson').encode({1}) == '[1]')"));
  CHECK(ctest_lua(h.L, "assert(#require('coral.host').embedded_files('lua/') > 0)"));
  CHECK(!ctest_lua(h.L, "require('coral.no_such_module')"));
  ctest_host_close(&h);
}

static void callback_error_is_raised_by_run(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local uv = require 'luv'\n"
    "local t = uv.new_timer()\n"
    "t:start(1, 0, function() t:close(); error('in callback') end)\n"
    "local ok, err = pcall(uv.run)\n"
    "assert(not ok and err:find('in callback'), err)\n"
    "assert(uv.run() == false)\n"));
  ctest_host_close(&h);
}

static void shutdown_closes_open_handles(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L,
    "local uv = require 'luv'\n"
    "uv.new_timer():start(100000, 0, function() end)\n"
    "local p = uv.new_pipe()\n"
    "local n = 0; uv.walk(function() n = n + 1 end); assert(n == 2)\n"));
  ctest_host_close(&h);   /* uv_loop_close fails if a handle is left */
}

int main(void) {
  RUN(opens_embedded_modules);
  RUN(callback_error_is_raised_by_run);
  RUN(shutdown_closes_open_handles);
  CTEST_EXIT();
}

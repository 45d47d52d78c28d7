/* C tests of coral.dag under ASan and UBSan: every array of the graph is grown, rolled back
 * and freed without a leak or an overflow, also when a Lua error cuts an add() short. */
#include "ctest.h"

/* A bare state with only coral.dag, as `dag`: the opener must not need the host. */
static lua_State *bare_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "coral.dag", coral_dag_open, 0);
  lua_setglobal(L, "dag");
  return L;
}

static void opens_without_the_host(void) {
  lua_State *L = bare_state();
  CHECK(ctest_lua(L,
    "local g = dag.new()\n"
    "assert(g:add('a') == 1 and g:add('b', {'a'}) == 2)\n"
    "assert(g:validate())\n"
    "assert(getmetatable(g).__name == 'coral.dag')\n"));
  lua_close(L);   /* the graph is freed by __gc: ASan's leak check sees it */
}

static void preloaded_by_the_host(void) {
  ctest_host h;
  ctest_host_open(&h);
  CHECK(ctest_lua(h.L, "local dag = require 'coral.dag'; assert(dag.new():validate())"));
  ctest_host_close(&h);
}

/* Errors raised halfway through add(), after dependencies were written past the committed
 * end and forward names were copied: nothing may leak and the next add must not see them. */
static void errors_midway_leave_no_trace(void) {
  lua_State *L = bare_state();
  CHECK(ctest_lua(L,
    "local g = dag.new()\n"
    "g:add('a')\n"
    "for i = 1, 200 do\n"
    "  local deps = {}\n"
    "  for j = 1, 50 do deps[j] = 'later' .. j end\n"
    "  deps[51] = (i % 2 == 0) and true or 99\n"
    "  assert(not pcall(g.add, g, 'x' .. i, deps))\n"
    "  assert(not pcall(g.add, g, 'y' .. i, {'a'}, {weight = -1}))\n"
    "  local ok, err, kind = g:add('a', {'q'})\n"
    "  assert(kind == 'duplicate')\n"
    "end\n"
    "assert(#g == 1)\n"
    "g:add('b', {'a'})\n"
    "local d = g:deps('b'); assert(#d == 1 and d[1] == 'a')\n"
    "assert(g:validate())\n"));
  lua_close(L);
}

/* Random graphs with forward references, failed dynamic batches (rolled back), failures
 * that skip, releases, and tasks added while running, then a full drain. */
static void random_runs(void) {
  lua_State *L = bare_state();
  CHECK(ctest_lua(L,
    "for seed = 1, 8 do\n"
    "  math.randomseed(seed)\n"
    "  local g, n = dag.new(), 3000\n"
    "  for i = 1, n do\n"
    "    local deps = {}\n"
    "    for _ = 1, math.random(0, 5) do\n"
    "      local j = math.random(1, n)\n"
    "      if j < i or (j > i and math.random() < 0.0005) then deps[#deps + 1] = 't' .. j end\n"
    "    end\n"
    "    g:add('t' .. i, deps, {weight = math.random(0, 3), priority = math.random(-1, 1)})\n"
    "  end\n"
    "  local ok, err = g:validate()\n"
    "  if ok then\n"
    "    g:phases(); g:critical_path()\n"
    "    local added, running = 0, {}\n"
    "    while true do\n"
    "      for _, id in ipairs(g:ready(math.random(1, 50))) do running[#running + 1] = id end\n"
    "      if #running == 0 then break end\n"
    "      local id = table.remove(running, math.random(1, #running))\n"
    "      local r = math.random()\n"
    "      g:done(id, r > 0.05, {release = r < 0.02})\n"
    "      if added < 200 and math.random() < 0.1 then\n"
    "        added = added + 1\n"
    "        g:add('d' .. added .. 'b', {'d' .. added .. 'a'})\n"
    "        g:add('d' .. added .. 'a', {id})\n"
    "        if math.random() < 0.3 then g:add('d' .. added .. 'c', {'d' .. added .. 'c2'}); g:add('d' .. added .. 'c2', {'d' .. added .. 'c'}) end\n"
    "        if math.random() < 0.2 then g:add('d' .. added .. 'u', {'nowhere'}) end\n"
    "        g:validate()\n"
    "      end\n"
    "    end\n"
    "    local c = g:counts()\n"
    "    assert(c.pending + c.ready + c.running == 0, 'not drained')\n"
    "    assert(c.done + c.failed + c.skipped == c.total)\n"
    "  else\n"
    "    assert(err:find('^dependency cycle: ') and #g == 0, err)\n"
    "  end\n"
    "  if seed % 2 == 0 then g:close() end\n"
    "end\n"
    "collectgarbage()\n"));
  lua_close(L);
}

/* A long cycle: its path is reported whole without running out of Lua stack. */
static void long_cycle(void) {
  lua_State *L = bare_state();
  CHECK(ctest_lua(L,
    "local g, n = dag.new(), 200000\n"
    "for i = 1, n do g:add('c' .. i, {'c' .. (i % n + 1)}) end\n"
    "local ok, err, kind, ids = g:validate()\n"
    "assert(kind == 'cycle' and #ids == n + 1 and ids[1] == 'c1' and ids[n + 1] == 'c1')\n"
    "assert(err:sub(1, 32) == 'dependency cycle: c1 -> c2 -> c3')\n"));
  lua_close(L);
}

/* reset(): a failed task and the tasks skipped behind it run again, except those another
 * failure still blocks; then the graph drains as if they had never failed. */
static void reset_runs_failed_tasks_again(void) {
  lua_State *L = bare_state();
  CHECK(ctest_lua(L,
    "local g = dag.new()\n"
    "g:add('a'); g:add('b'); g:add('c', {'a'}); g:add('d', {'c', 'b'}); g:add('e', {'a', 'x'}); g:add('x')\n"
    "g:add('f', {'b'})\n"
    "assert(g:validate())\n"
    "local r = g:ready(); assert(#r == 3)\n"   /* a, b, x */
    "local sk = g:done('a', false); assert(table.concat(sk, ' ') == 'c d e', table.concat(sk, ' '))\n"
    "local sk2 = g:done('x', false); assert(#sk2 == 0)\n"
    "g:done('b', true)\n"
    "assert(not pcall(g.reset, g, 'b'))\n"   /* done: not resettable */
    "local ok, err = pcall(g.reset, g, 'd'); assert(not ok and err:find(\"behind skipped task 'c'\"), err)\n"
    "local ids = g:reset('a')\n"
    "assert(table.concat(ids, ' ') == 'a c d', table.concat(ids, ' '))\n"   /* e stays: x failed */
    "assert(g:state('a') == 'ready' and g:state('c') == 'pending' and g:state('e') == 'skipped')\n"
    "local c = g:counts(); assert(c.ready == 2 and c.pending == 2 and c.skipped == 1 and c.failed == 1, c.ready)\n"
    "local order = {}\n"
    "while true do\n"
    "  local batch = g:ready()\n"
    "  if #batch == 0 then break end\n"
    "  for _, id in ipairs(batch) do order[#order + 1] = id; g:done(id, true) end\n"
    "end\n"
    "assert(table.concat(order, ' ') == 'a f c d', table.concat(order, ' '))\n"
    "assert(table.concat(g:reset('x'), ' ') == 'x e')\n"
    "assert(g:ready()[1] == 'x'); g:done('x', true); assert(g:ready()[1] == 'e'); g:done('e', true)\n"
    "c = g:counts(); assert(c.done == c.total)\n"
    "local h = dag.new(); h:add('p'); h:add('q', {'p'}); assert(h:validate()); h:ready()\n"
    "h:done('p', false, { release = true })\n"
    "ok, err = pcall(h.reset, h, 'p'); assert(not ok and err:find('released'), err)\n"));
  lua_close(L);
}

int main(void) {
  RUN(opens_without_the_host);
  RUN(preloaded_by_the_host);
  RUN(errors_midway_leave_no_trace);
  RUN(random_runs);
  RUN(long_cycle);
  RUN(reset_runs_failed_tasks_again);
  CTEST_EXIT();
}

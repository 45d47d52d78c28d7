-- luacheck settings for `make lint` and for the lint test of `make test` (scripts/run-tests),
-- both of which run `luacheck .` from the top of the tree. Every Lua file of the tree is checked.
std = "lua54"
codes = true
include_files = { "lua/**/*.lua", "recipes/**/*.lua", "spec/**/*.lua", "scripts/*.lua", "bench/*.lua" }

-- Modules and recipes take what they need as parameters: `arg` there would be the host's
-- command line, never what they mean. Recipes get coral by `require "coral"`
-- (lua/coral/recipes.lua loads them with the ordinary globals), so they need no global of ours.
files["lua"] = { not_globals = { "arg" } }
files["recipes"] = { not_globals = { "arg" } }
-- Specs run under busted (describe, it, pending, finally, assert.are...). The scripts they
-- write to files or pass to `coral -e` are strings, not checked here.
files["spec"] = { std = "+busted", not_globals = { "arg" } }
-- scripts/*.lua and bench/*.lua run as `coral FILE ARGS` or `lua5.4 FILE ARGS` and read `arg`,
-- which std lua54 has; they need nothing else.

-- Not checked, on purpose:
-- * An unused implicit `self`: a method defined with `:` keeps the calling convention of its
--   interface (progress views, executors, drivers) whether or not its body needs the object.
self = false
-- * Line length: the tree has no width rule, and its long lines are long on purpose: a recipe's
--   first line is its one-line summary (`coral recipes` reads it), the HTML and SVG of
--   lua/coral/view/report.lua keep one element per format string, and spec fixtures keep a
--   recipe or an expected message on one line as the file or output they stand for.
max_line_length = false

--- coral: run plans of agent tasks as a dependency graph.
-- This module is what recipes and the REPL see as `coral`; its parts load on first use.
local host = require "coral.host"

local M = {}

--- The version of this coral build, e.g. "0.1.0".
M.version = host.version

return M

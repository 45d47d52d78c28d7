-- Runs busted inside the coral host, so specs use the real C modules: coral scripts/busted.lua [busted args]
require "busted.runner" ({ standalone = false })

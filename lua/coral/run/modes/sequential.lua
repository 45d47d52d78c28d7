--- Sequential mode: one task at a time, in dependency order.
return require("coral.run.modes").extend("dependency", {
  name = "sequential",
  label = "SEQUENTIAL",
  summary = "one task at a time, in dependency order",
  workers = function() return 1 end,
})

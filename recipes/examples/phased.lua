-- examples/phased: a custom plan written as phases: research in parallel, design in parallel, a sequential implementation, then UI and ML integration in parallel.
-- In a list of phases, a task without depends_on waits for the whole phase before it; a task
-- can name its own dependencies instead (the implementation steps below are a chain).
-- Run it: coral run examples/phased "Recipe recommendations for a cooking app" --agent sim
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "phases: research ∥, design ∥, sequential implementation, UI + ML integration ∥",
  plan = function(description)
    return coral.plan({
      -- Phase 1: research, all at once.
      { t { id = "research-users", agent = "technical-writer", estimate = 60,
            task = "Research the users and their needs; write the requirements" },
        t { id = "research-tech", agent = "project-architect", estimate = 60,
            task = "Survey the technical options and constraints; recommend a stack" },
        t { id = "research-data", agent = "data-engineer", estimate = 60,
            task = "Inventory the data available for the feature and its quality" } },
      -- Phase 2: design, all at once, after all research.
      { t("api-designer", "Design the API", { estimate = 60 }),
        t("ui-designer", "Design the UI", { estimate = 60 }),
        t { id = "ml-design", agent = "ai-ml-specialist", estimate = 60, task = "Design the model and its evaluation" } },
      -- Phase 3: implementation, one step after the other.
      { t { id = "impl-data", agent = "backend-developer", estimate = 90,
            task = "Implement the data layer", depends_on = { "api-designer", "ml-design" } },
        t { id = "impl-api", agent = "backend-developer", estimate = 90,
            task = "Implement the API on the data layer", depends_on = { "impl-data" } },
        t { id = "impl-model", agent = "ai-ml-specialist", estimate = 90,
            task = "Train the model and expose it behind the API", depends_on = { "impl-api" } } },
      -- Phase 4: integration, UI and ML at once, after the implementation chain.
      { t { id = "integrate-ui", agent = "frontend-developer", estimate = 60,
            task = "Build the UI on the API", depends_on = { "ui-designer", "impl-model" } },
        t { id = "integrate-ml", agent = "full-stack-engineer", estimate = 60,
            task = "Wire the model's results into the product end to end", depends_on = { "impl-model" } } },
    }, { name = "examples/phased", description = description })
  end,
}

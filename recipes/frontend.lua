-- frontend: a web frontend: UI design and frontend architecture, components, accessibility, integration and testing.
-- UI design and the frontend architecture run in parallel; the components start once both are
-- done, the accessibility review as soon as the UI design is; integration and testing come last.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "a web frontend: UI design + architecture, components + accessibility, integration + testing",
  aliases = { "frontend_app", "spa", "web_frontend" },
  plan = function(description)
    return coral.plan({
      { t("ui-designer", "Design the UI: user flows, screens with all their states, components, design tokens",
          { estimate = 150 }),
        t("project-architect", "Design the frontend architecture: framework, routing, state, data fetching, build",
          { id = "frontend-architecture", estimate = 120 }) },
      { t("frontend-developer", "Build the components and screens from the UI design on the chosen architecture",
          { id = "components", depends_on = { "ui-designer", "frontend-architecture" }, estimate = 300 }),
        t("accessibility-specialist", "Review the UI design against WCAG 2.2 AA and specify the fixes",
          { depends_on = { "ui-designer" }, estimate = 90 }) },
      { t("full-stack-engineer", "Integrate the components with the backend API and the accessibility fixes",
          { id = "integration", depends_on = { "components", "accessibility-specialist" }, estimate = 150 }),
        t("qa-testing", "Write and run component and end-to-end tests; report defects",
          { id = "testing", depends_on = { "components", "accessibility-specialist" }, estimate = 120 }) },
    }, { name = "frontend", description = description })
  end,
}

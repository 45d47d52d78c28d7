-- full_stack: a web application from architecture to deployment (ten agents, six phases).
-- Database, API and UI design run in parallel; the backend starts as soon as the database and
-- API designs are done, the frontend as soon as the UI design is; integration and QA wait for
-- both; deployment comes last.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "a web application: architecture, requirements, design, backend, frontend, QA, deployment",
  aliases = { "full_stack_app", "fullstack", "web_app" },
  plan = function(description)
    return coral.plan({
      { t("project-architect", "Design the system architecture, technology stack and module boundaries",
          { estimate = 180 }) },
      { t("technical-writer", "Write the requirements: user stories, acceptance criteria, non-functional needs",
          { estimate = 120 }) },
      { t("database-specialist", "Design the database schema, indexes and migrations", { estimate = 150 }),
        t("api-designer", "Design the REST API: endpoints, payloads, errors, authentication", { estimate = 150 }),
        t("ui-designer", "Design the UI: screens, components, navigation, accessibility", { estimate = 120 }) },
      { t("backend-developer", "Implement the backend API and data layer",
          { depends_on = { "database-specialist", "api-designer" }, estimate = 300 }),
        t("frontend-developer", "Implement the frontend from the UI design",
          { depends_on = { "ui-designer" }, estimate = 240 }) },
      { t("full-stack-engineer", "Integrate frontend and backend end to end", { estimate = 180 }),
        t("qa-testing", "Write and run the test suites; report defects", { estimate = 150 }) },
      { t("devops-deployment", "Containerise, configure CI/CD and deploy", { estimate = 90 }) },
    }, { name = "full_stack", description = description })
  end,
}

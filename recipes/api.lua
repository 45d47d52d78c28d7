-- api: a backend API service: architecture, API design and data models, backend, security, QA, deployment.
-- The API design and the data models are made in parallel after the architecture; the backend
-- starts once both are done, the security review as soon as the API design is; QA and the
-- deployment set-up run together at the end.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "a backend API: architecture, API design + data models, backend + security, QA + deployment",
  aliases = { "api_service", "backend", "rest_api" },
  plan = function(description)
    return coral.plan({
      { t("project-architect", "Design the service architecture, technology stack and module boundaries of the API",
          { estimate = 150 }) },
      { t("api-designer", "Design the API contract as OpenAPI: resources, endpoints, payloads, errors, auth, versioning",
          { estimate = 150 }),
        t("database-specialist", "Design the data models: schema, constraints, indexes, migrations, seed data",
          { estimate = 120 }) },
      { t("backend-developer", "Implement the API against the contract and data models, with tests",
          { depends_on = { "api-designer", "database-specialist" }, estimate = 300 }),
        t("security-specialist", "Threat-model the API design: authentication, authorisation, input validation, rate limits",
          { depends_on = { "api-designer" }, estimate = 120 }) },
      { t("qa-testing", "Test the API end to end against the contract and the security findings; report defects",
          { estimate = 150 }),
        t("devops-deployment", "Containerise the API, set up CI/CD and the deployment with health checks",
          { estimate = 90 }) },
    }, { name = "api", description = description })
  end,
}

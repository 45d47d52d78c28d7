-- microservice: one service in a larger system: boundaries, contracts, data, implementation, security, tests, deployment and operations.
-- The architect fixes the service's boundary and its contracts with its neighbours; the API
-- and event contracts and the service-owned data are designed in parallel; implementation and
-- the security review follow; contract tests and the deployment run together; the SRE sets up
-- observability and SLOs on top of the deployed service.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "one service of a larger system: contracts, data, implementation, security, deployment, SLOs",
  aliases = { "microservices" },
  plan = function(description)
    return coral.plan({
      { t("project-architect", "Define the service boundary: responsibilities, neighbours, sync and async contracts, failure modes",
          { estimate = 150 }) },
      { t("api-designer", "Design the service's API and the events it publishes and consumes (schemas, versioning, idempotency)",
          { estimate = 150 }),
        t("database-specialist", "Design the data the service owns: schema, migrations, outbox for events",
          { estimate = 120 }) },
      { t("backend-developer", "Implement the service: handlers, event consumers and producers, data access, tests",
          { depends_on = { "api-designer", "database-specialist" }, estimate = 300 }),
        t("security-specialist", "Secure service-to-service calls: identities, authorisation, secrets, input validation",
          { depends_on = { "api-designer" }, estimate = 90 }) },
      { t("qa-testing", "Write consumer-driven contract tests and integration tests with the neighbours mocked",
          { estimate = 150 }),
        t("devops-deployment", "Containerise the service; write its deployment manifests and CI/CD pipeline",
          { estimate = 120 }) },
      { t("site-reliability-engineer", "Define SLOs; add health checks, metrics, tracing, alerts and runbooks",
          { estimate = 120 }) },
    }, { name = "microservice", description = description })
  end,
}

-- data_pipeline: a data pipeline: sources to storage, ingestion, transformations, data quality, orchestration and monitoring.
-- After the architecture, the storage layout and the ingestion are built in parallel; the
-- transformations need both; data-quality tests and orchestration follow; the SRE adds
-- freshness SLOs and alerts; the technical writer documents lineage and operation.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "a data pipeline: architecture, storage + ingestion, transformations, quality, orchestration, monitoring",
  aliases = { "etl", "etl_pipeline" },
  plan = function(description)
    return coral.plan({
      { t("project-architect", "Design the pipeline: sources, sinks, batch or streaming, volumes, latency and freshness targets",
          { estimate = 150 }) },
      { t("database-specialist", "Design the storage layout: raw, staged and serving tables, partitioning, retention",
          { estimate = 120 }),
        t { id = "ingestion", agent = "data-engineer", estimate = 180,
            task = "Build incremental, idempotent ingestion from each source with checkpoints" } },
      { t { id = "transformations", agent = "data-engineer", estimate = 240, depends_on = { "database-specialist", "ingestion" },
            task = "Build the transformations stage by stage with explicit schemas and quarantine for bad records" },
        t("security-specialist", "Classify personal data; design masking, access control and retention enforcement",
          { depends_on = { "database-specialist" }, estimate = 90 }) },
      { t("qa-testing", "Write data-quality checks and transformation tests on fixture data; run them",
          { depends_on = { "transformations" }, estimate = 120 }),
        t("devops-deployment", "Orchestrate the pipeline: schedule or DAG, retries, backfill procedure, CI",
          { depends_on = { "transformations", "security-specialist" }, estimate = 120 }) },
      { t("site-reliability-engineer", "Add freshness and volume SLOs, monitoring and alerts with runbooks",
          { estimate = 90 }),
        t("technical-writer", "Document the pipeline: sources, stages, schemas, lineage, how to run and backfill",
          { estimate = 90 }) },
    }, { name = "data_pipeline", description = description })
  end,
}

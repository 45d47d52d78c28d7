-- ml_feature: a machine-learning feature inside a product: framing, data, model, serving, integration, evaluation and operation.
-- The architect places the feature in the product; the ML design and the training data are
-- worked out in parallel; training and the serving API follow (serving only needs the ML
-- design's interface); integration, security and performance come next; deployment with drift
-- monitoring last.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "an ML feature in a product: framing, data, training + serving, integration, checks, deployment",
  aliases = { "machine_learning", "ml_model" },
  plan = function(description)
    return coral.plan({
      { t("project-architect", "Place the ML feature in the product: user value, where it runs, interfaces, fallbacks",
          { estimate = 120 }) },
      { t { id = "ml-design", agent = "ai-ml-specialist", estimate = 150,
            task = "Frame the ML problem: inputs, output, success metric, baseline, model candidates, serving interface" },
        t("data-engineer", "Build the training and evaluation data: sources, labels, leakage-free splits, feature pipeline",
          { estimate = 180 }) },
      { t { id = "model", agent = "ai-ml-specialist", estimate = 300, depends_on = { "ml-design", "data-engineer" },
            task = "Train and evaluate the model against the baseline; write the model card" },
        t { id = "serving", agent = "backend-developer", estimate = 180, depends_on = { "ml-design" },
            task = "Implement the serving API with the model behind an interface, versioning and a fallback" } },
      { t { id = "integration", agent = "full-stack-engineer", estimate = 150, depends_on = { "model", "serving" },
            task = "Integrate the feature into the product UI and backend; feature flag it" },
        t("security-specialist", "Review the feature for data privacy, abuse and model-specific attacks",
          { depends_on = { "serving" }, estimate = 90 }) },
      { t("performance-engineer", "Measure latency and cost of inference under load; meet the budget",
          { estimate = 90 }),
        t("qa-testing", "Test the feature end to end, including fallbacks and bad inputs", { estimate = 120 }) },
      { t("devops-deployment", "Deploy model and service with staged rollout; monitor quality and drift",
          { estimate = 90 }) },
    }, { name = "ml_feature", description = description })
  end,
}

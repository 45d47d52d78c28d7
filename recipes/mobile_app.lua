-- mobile_app: an iOS and Android app with its backend: architecture, UI and API design, app and backend, accessibility, security, QA, release.
-- UI and API design run in parallel after the architecture; the app starts when both are done,
-- the backend as soon as the API is; accessibility, security and QA review what was built;
-- the release pipeline comes last.
local coral = require "coral"
local t = coral.task

return coral.recipe {
  summary = "a mobile app and its backend: design, app + backend, accessibility, security, QA, release",
  aliases = { "mobile", "mobile_application" },
  plan = function(description)
    return coral.plan({
      { t("project-architect", "Design the app architecture: platforms, framework, offline strategy, backend services",
          { estimate = 150 }) },
      { t("ui-designer", "Design the mobile UI: flows, screens and states, navigation, platform conventions",
          { estimate = 150 }),
        t("api-designer", "Design the mobile backend API: endpoints, auth with token refresh, pagination, sync",
          { estimate = 120 }) },
      { t("mobile-developer", "Build the app: screens, navigation, API client, offline storage and sync, push",
          { depends_on = { "ui-designer", "api-designer" }, estimate = 360 }),
        t("backend-developer", "Implement the mobile backend API with tests",
          { depends_on = { "api-designer" }, estimate = 240 }) },
      { t("accessibility-specialist", "Review the app with screen readers and dynamic type; fix the issues",
          { depends_on = { "mobile-developer" }, estimate = 90 }),
        t("security-specialist", "Review credential storage, transport security, API authorisation and data at rest",
          { depends_on = { "mobile-developer", "backend-developer" }, estimate = 90 }),
        t("qa-testing", "Test the app against the backend on both platforms; report defects",
          { depends_on = { "mobile-developer", "backend-developer" }, estimate = 150 }) },
      { t("devops-deployment", "Set up CI builds, signing, store releases and the backend deployment",
          { estimate = 120 }) },
    }, { name = "mobile_app", description = description })
  end,
}

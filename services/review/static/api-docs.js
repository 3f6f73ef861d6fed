// The review API's Swagger page (/api/docs, AUTOLABEL_REVIEW_API_DOCS): a file, not an inline
// script, so the app's CSP (script-src 'self') holds here too.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({ url: root.getAttribute("data-url"), dom_id: "#swagger-ui" });
})();

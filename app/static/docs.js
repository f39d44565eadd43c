// The /docs page: Swagger UI over this api's /openapi.json. A file of its own (not inline)
// so the pages' Content-Security-Policy (script-src 'self') holds here too.
// validatorUrl null: no badge fetched from a validator elsewhere (nothing leaves this origin);
// persistAuthorization false: the token typed into "Authorize" lives in this tab's memory only.
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    showCommonExtensions: true,  // a parameter's bounds, pattern and lengths beside it
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});

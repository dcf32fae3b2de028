// Swagger UI over relay's OpenAPI 3.1 document. A file rather than an inline script, so that the
// page's Content-Security-Policy can refuse every script but this origin's.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#ui",
  deepLinking: true,
  // Swagger UI's default sends the document to an outside validator; relay's stays here.
  validatorUrl: null,
});

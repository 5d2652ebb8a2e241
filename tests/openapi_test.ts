import assert from "node:assert/strict";
import { testEnv } from "./_helpers.ts";

Deno.test("the OpenAPI document describes every route", async () => {
  await using env = await testEnv("openapi");
  const res = await env.services.app.request("/openapi.json");
  assert.equal(res.status, 200);
  const doc = await res.json();
  assert.equal(doc.openapi, "3.1.0");
  // Every route of the app is described (both ways: tests/openapi_contract_test.ts); these at least.
  const paths = Object.keys(doc.paths);
  for (
    const path of [
      "/admin/dead-letters",
      "/admin/dead-letters/redrive",
      "/admin/dead-letters/{id}",
      "/admin/replay",
      "/admin/tasks/{task_id}/events",
      "/health",
      "/stats",
      "/task/{task_id}",
      "/task/{task_id}/events",
      "/videos/{video_id}/scenes",
      "/webhook",
    ]
  ) assert.ok(paths.includes(path), path);
  const webhook = doc.paths["/webhook"].post;
  const schema = webhook.requestBody.content["application/json"].schema;
  for (const field of ["prompt", "image_url", "video_id", "user_id", "user_email"]) {
    assert.ok(schema.required.includes(field), field);
  }
  // Every status POST /webhook answers (401 auth, 408 slow body, 429 rate limit included).
  // Admin routes list their 400s (bad JSON, nothing to do, bad cursor or count) and 503.
  for (
    const [path, method] of [
      ["/admin/replay", "post"],
      ["/admin/dead-letters", "get"],
      ["/admin/dead-letters/redrive", "post"],
    ]
  ) {
    for (const status of ["400", "401", "404", "503"]) {
      assert.ok(doc.paths[path][method].responses[status], `${path} ${status}`);
    }
  }
  assert.deepEqual(Object.keys(webhook.responses).sort(), [
    "202",
    "400",
    "401",
    "408",
    "409",
    "413",
    "415",
    "422",
    "429",
    "503",
  ]);
  // The read routes declare the read token (header or bearer) and its 401.
  assert.equal(doc.components.securitySchemes.readToken.in, "header");
  assert.equal(doc.components.securitySchemes.readToken.name, "x-read-token");
  assert.equal(doc.components.securitySchemes.readBearer.scheme, "bearer");
  // And the webhook's: the token header, or the three Standard Webhooks headers together.
  assert.equal(doc.components.securitySchemes.webhookToken.name, "x-webhook-token");
  assert.deepEqual(webhook.security, [
    { webhookToken: [] },
    { webhookId: [], webhookTimestamp: [], webhookSignature: [] },
  ]);
  assert.equal(doc.components.securitySchemes.adminBearer.scheme, "bearer");
  for (
    const path of [
      "/stats",
      "/task/{task_id}",
      "/task/{task_id}/events",
      "/videos/{video_id}/scenes",
    ]
  ) {
    const get = doc.paths[path].get;
    assert.deepEqual(get.security, [{ readToken: [] }, { readBearer: [] }], path);
    assert.equal(
      get.responses["401"].content["application/problem+json"] !== undefined,
      true,
      path,
    );
  }
  assert.equal(doc.paths["/health"].get.security, undefined, "/health stays open");
});

Deno.test("the docs page and its assets are served locally", async () => {
  await using env = await testEnv("docs");
  const page = await env.services.app.request("/docs");
  assert.equal(page.status, 200);
  const html = await page.text();
  assert.doesNotMatch(html, /https?:\/\//, "no external assets");
  for (const src of html.matchAll(/(?:href|src)="([^"]+)"/g)) {
    const asset = await env.services.app.request(src[1]);
    assert.equal(asset.status, 200, src[1]);
    assert.ok((await asset.arrayBuffer()).byteLength > 20, src[1]);
  }
  for (const name of ["constructor", "toString", "nope.js"]) {
    const missing = await env.services.app.request(`/docs/assets/${name}`);
    assert.equal(missing.status, 404, name);
    await missing.body?.cancel();
  }
});

Deno.test("health reports Redis latency, provider mode and consumer groups", async () => {
  await using env = await testEnv("health");
  const res = await env.services.app.request("/health");
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.status, "ok");
  assert.equal(body.redis.ok, true);
  assert.ok(body.redis.latency_ms >= 0);
  assert.equal(body.provider_mode, "offline");
  assert.ok(Array.isArray(body.consumer_groups));
});

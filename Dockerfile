# One image for both roles: `deno task start` (HTTP API, the default) and `deno task worker`.
FROM denoland/deno:debian-2.9.6

WORKDIR /app
# Dependencies first, so the layer is cached until deno.json or deno.lock change.
COPY deno.json deno.lock ./
RUN deno install --frozen

COPY . .
RUN deno cache main.ts src/cli/replay.ts src/cli/dlq.ts && chown -R deno:deno /app

USER deno
ENV PORT=8000 HOST=0.0.0.0
EXPOSE 8000
CMD ["deno", "task", "start"]

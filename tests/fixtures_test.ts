import assert from "node:assert/strict";
import { FIXTURES, SHARED_FIXTURES } from "./_helpers.ts";

function listFiles(root: URL, dir = ""): string[] {
  return [...Deno.readDirSync(new URL(dir, root))].flatMap((e) =>
    e.isDirectory ? listFiles(root, `${dir}${e.name}/`) : [`${dir}${e.name}`]
  ).sort();
}

Deno.test({
  name: "the vendored fixtures match ../shared/fixtures/webhooks",
  ignore: (() => {
    try {
      return !Deno.statSync(SHARED_FIXTURES).isDirectory;
    } catch {
      return true;
    }
  })(),
  fn() {
    const shared = listFiles(SHARED_FIXTURES);
    assert.deepEqual(listFiles(FIXTURES), shared);
    for (const name of shared) {
      assert.equal(
        Deno.readTextFileSync(new URL(name, FIXTURES)),
        Deno.readTextFileSync(new URL(name, SHARED_FIXTURES)),
        name,
      );
    }
  },
});

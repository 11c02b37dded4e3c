// Build the client into src/sserelay/static/: the ES module, the classic build (a global
// `sserelay`) and the TypeScript declarations. `--check` builds in memory and fails if the
// committed files differ (stale) or a build is over the size budget.
//
//   npm ci && npm run build     (write)        npm run check     (verify, as the tests do)

import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

/** Minified and gzipped, at most this many bytes (issue 15). */
export const BUDGET = 4096;

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "..", "src", "sserelay.js");
const out = join(here, "..", "..", "src", "sserelay", "static");
const { version } = JSON.parse(readFileSync(join(here, "..", "package.json"), "utf8"));

const common = {
  entryPoints: [source],
  bundle: true,
  minify: true,
  write: false,
  target: "es2020",
  legalComments: "none",
  banner: { js: `/* sserelay.js ${version} | MIT | source: js/src/sserelay.js */` },
};

async function build() {
  const esm = await esbuild.build({ ...common, format: "esm" });
  const classic = await esbuild.build({ ...common, format: "iife", globalName: "sserelay" });
  return {
    "sserelay.js": esm.outputFiles[0].text,
    "sserelay.classic.js": classic.outputFiles[0].text,
    "sserelay.d.ts": readFileSync(join(here, "..", "src", "sserelay.d.ts"), "utf8"),
  };
}

const files = await build();
const problems = [];
for (const [name, text] of Object.entries(files)) {
  const size = gzipSync(Buffer.from(text), { level: 9 }).length;
  if (name.endsWith(".js")) {
    console.log(`${name}: ${Buffer.byteLength(text)} bytes minified, ${size} gzipped`);
    if (size > BUDGET) problems.push(`${name} is ${size} bytes gzipped, over ${BUDGET}`);
  }
  const path = join(out, name);
  if (process.argv.includes("--check")) {
    let committed = null;
    try {
      committed = readFileSync(path, "utf8");
    } catch {}
    if (committed !== text) problems.push(`${path} is stale: run npm run build in js/`);
  } else {
    writeFileSync(path, text);
  }
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}

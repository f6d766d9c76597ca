// Builds the explorer's front-end into the Python package (ssa/viz/explorer/static/):
//   explorer.min.js        one minified IIFE bundle (sigma, graphology and the app)
//   explorer.min.css       the minified style sheet
//   THIRD-PARTY-LICENSES.txt  the licence of every npm package inside the bundle
//   VERSIONS.json          the exact version of every bundled package (from package-lock.json)
// Run it with `make explorer-assets` (npm ci + node build.mjs). The output is deterministic:
// the same lock file and sources give byte-identical files.
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync, readdirSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, process.argv[2] || "../../ssa/viz/explorer/static");
mkdirSync(out, { recursive: true });

const js = await build({
  entryPoints: [join(here, "src/main.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  legalComments: "none", // the licences are shipped whole in THIRD-PARTY-LICENSES.txt
  metafile: true,
  write: false,
  logLevel: "warning",
});
const css = await build({
  entryPoints: [join(here, "src/style.css")],
  bundle: true,
  minify: true,
  write: false,
  logLevel: "warning",
});

// which npm packages ended up in the bundle (from esbuild's metafile)
const packages = new Set();
for (const input of Object.keys(js.metafile.inputs)) {
  const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (m) packages.add(m[1]);
}
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const versions = {};
const licences = [];
for (const name of [...packages].sort()) {
  const dir = join(here, "node_modules", name);
  const meta = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const locked = lock.packages[`node_modules/${name}`];
  if (!locked || locked.version !== meta.version) {
    throw new Error(`${name}: installed ${meta.version} is not the locked version; run npm ci`);
  }
  versions[name] = { version: meta.version, license: meta.license, integrity: locked.integrity };
  const file = readdirSync(dir).find((f) => /^licen[cs]e/i.test(f));
  if (!file) throw new Error(`${name} ships no licence file`);
  licences.push(`${name} ${meta.version} (${meta.license})\n${"=".repeat(72)}\n${readFileSync(join(dir, file), "utf8").trim()}\n`);
}

const banner = `/* ssa explorer bundle: ${Object.entries(versions).map(([n, v]) => `${n}@${v.version}`).join(", ")}; ` +
  `licences in THIRD-PARTY-LICENSES.txt */\n`;
writeFileSync(join(out, "explorer.min.js"), banner + js.outputFiles[0].text);
writeFileSync(join(out, "explorer.min.css"), css.outputFiles[0].text);
writeFileSync(join(out, "VERSIONS.json"), JSON.stringify({ bundled: versions, built_with: { esbuild: lock.packages["node_modules/esbuild"].version } }, null, 2) + "\n");
writeFileSync(join(out, "THIRD-PARTY-LICENSES.txt"),
  "Third-party software bundled in explorer.min.js (built from frontend/explorer/package-lock.json)\n\n" +
  licences.join("\n"));
if (!existsSync(join(out, "explorer.min.js"))) throw new Error("build wrote nothing");
console.log(`wrote ${out}: explorer.min.js (${js.outputFiles[0].text.length} bytes), explorer.min.css, VERSIONS.json, THIRD-PARTY-LICENSES.txt`);

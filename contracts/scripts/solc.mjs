// Shared solcjs wrapper: standard-JSON compilation with an import callback that resolves
// `@openzeppelin/...` and project-relative paths from the contracts folder.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");

export const CONTRACTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SEARCH_ROOTS = [CONTRACTS_DIR, path.join(CONTRACTS_DIR, "node_modules"), process.cwd()];

function findImport(importPath) {
  for (const root of SEARCH_ROOTS) {
    const candidate = path.resolve(root, importPath);
    if (existsSync(candidate)) {
      return { contents: readFileSync(candidate, "utf8") };
    }
  }
  return { error: `import not found: ${importPath}` };
}

/** Compile a standard-JSON input object; returns the parsed standard-JSON output. */
export function compileStandardJson(input) {
  const output = solc.compile(JSON.stringify(input), { import: findImport });
  return JSON.parse(output);
}

/** The compiler's long version string, e.g. 0.8.28+commit.7893614a.Emscripten.clang. */
export function compilerVersion() {
  return solc.version();
}

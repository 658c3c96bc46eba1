#!/usr/bin/env node
// A `solc` executable for forge, backed by solcjs (no native solc can be downloaded here).
// forge only needs `--version` and `--standard-json` (input on stdin, output on stdout).
import { readFileSync } from "node:fs";
import { compileStandardJson, compilerVersion } from "./solc.mjs";

const args = process.argv.slice(2);
if (args.includes("--version")) {
  const version = compilerVersion().replace(/\.Emscripten\.clang$/, ".Linux.g++");
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${version}\n`);
} else if (args.includes("--standard-json")) {
  const input = JSON.parse(readFileSync(0, "utf8"));
  process.stdout.write(JSON.stringify(compileStandardJson(input)));
} else {
  process.stderr.write(`solc-shim: unsupported arguments: ${args.join(" ")}\n`);
  process.exit(2);
}

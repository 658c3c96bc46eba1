#!/usr/bin/env node
// Compile contracts/src/*.sol with solcjs and write one deterministic JSON artifact per
// deployable contract (ABI + creation and runtime bytecode) under
// src/openledger/chain/artifacts/, which the Python wheel ships.
//
//   node scripts/build.mjs           regenerate the artifacts
//   node scripts/build.mjs --check   exit 1 if the committed artifacts differ from a rebuild
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { CONTRACTS_DIR, compileStandardJson, compilerVersion } from "./solc.mjs";

const ARTIFACTS_DIR = path.resolve(CONTRACTS_DIR, "..", "src", "openledger", "chain", "artifacts");
const CONTRACTS = [
  "AgentRegistry",
  "AttributionRewards",
  "ContributionVotes",
  "DataBonds",
  "DatanetRegistry",
  "ModelRegistry",
  "OpenLedgerGovernor",
  "OpenLedgerTimelock",
  "OpenToken",
  "OpenTokenL2",
];
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 10000 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function standardJsonInput() {
  const sources = {};
  for (const file of readdirSync(path.join(CONTRACTS_DIR, "src")).sort()) {
    if (file.endsWith(".sol")) {
      sources[`src/${file}`] = { content: readFileSync(path.join(CONTRACTS_DIR, "src", file), "utf8") };
    }
  }
  return { language: "Solidity", sources, settings: SETTINGS };
}

function compile() {
  const output = compileStandardJson(standardJsonInput());
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  for (const diagnostic of output.errors ?? []) process.stderr.write(diagnostic.formattedMessage + "\n");
  if (errors.length > 0) throw new Error(`solc reported ${errors.length} error(s)`);
  return output;
}

function artifacts(output) {
  const files = {};
  for (const name of CONTRACTS) {
    const compiled = output.contracts[`src/${name}.sol`][name];
    const artifact = {
      contractName: name,
      sourceName: `contracts/src/${name}.sol`,
      compiler: { version: compilerVersion(), settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer } },
      abi: compiled.abi,
      bytecode: "0x" + compiled.evm.bytecode.object,
      deployedBytecode: "0x" + compiled.evm.deployedBytecode.object,
    };
    files[`${name}.json`] = JSON.stringify(artifact, null, 2) + "\n";
  }
  return files;
}

function check(files) {
  const stale = [];
  for (const [name, text] of Object.entries(files)) {
    const file = path.join(ARTIFACTS_DIR, name);
    if (!existsSync(file) || readFileSync(file, "utf8") !== text) stale.push(name);
  }
  const extra = existsSync(ARTIFACTS_DIR)
    ? readdirSync(ARTIFACTS_DIR).filter((f) => f.endsWith(".json") && !(f in files))
    : [];
  if (stale.length + extra.length > 0) {
    process.stderr.write(`artifacts out of date: ${[...stale, ...extra].join(", ")}\n`);
    process.stderr.write("run `npm run build` in contracts/ and commit the result\n");
    process.exit(1);
  }
  process.stdout.write(`artifacts up to date (${Object.keys(files).length} contracts)\n`);
}

function write(files) {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(ARTIFACTS_DIR, name), text);
  process.stdout.write(`wrote ${Object.keys(files).length} artifacts to ${ARTIFACTS_DIR}\n`);
}

const files = artifacts(compile());
if (process.argv.includes("--check")) check(files);
else write(files);

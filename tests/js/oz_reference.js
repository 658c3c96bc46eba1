// Reads {"encoding": [...], "values": [[...], ...], "multi": [[index, ...], ...]} on stdin
// and prints the root, every single-leaf proof and one multiproof per index set, computed by
// @openzeppelin/merkle-tree, for comparison in tests.
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const { encoding, values, multi = [] } = JSON.parse(input);
  const tree = StandardMerkleTree.of(values, encoding);
  const proofs = values.map((_, i) => tree.getProof(i));
  const multiproofs = multi.map((indices) => tree.getMultiProof(indices));
  process.stdout.write(JSON.stringify({ root: tree.root, proofs, multiproofs }));
});

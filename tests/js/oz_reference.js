// Reads {"encoding": [...], "values": [[...], ...]} on stdin and prints the root, every
// proof and the tree dump computed by @openzeppelin/merkle-tree, for comparison in tests.
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const { encoding, values } = JSON.parse(input);
  const tree = StandardMerkleTree.of(values, encoding);
  const proofs = values.map((_, i) => tree.getProof(i));
  process.stdout.write(JSON.stringify({ root: tree.root, proofs }));
});

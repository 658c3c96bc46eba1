// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";

/// @title DatanetRegistry
/// @notice Community datanets and their append-only snapshot roots.
/// @dev A snapshot root is an OpenZeppelin StandardMerkleTree root over leaves
///      `(bytes32 recordHash, address contributor)`, i.e.
///      `keccak256(bytes.concat(keccak256(abi.encode(recordHash, contributor))))`.
///      A datanet id is `keccak256(abi.encode(owner, keccak256(bytes(name))))`, so names are
///      namespaced by their owner and nobody can squat another owner's id.
///      Ownership moves in two steps (the owner proposes, the new owner accepts); accepting
///      clears every curator, so nobody the old owner trusted keeps publishing.
contract DatanetRegistry is EIP712, Nonces {
    struct Datanet {
        address owner;
        uint64 registeredAt;
        bytes32 schemaHash;
        bytes32 metadataHash;
        string name;
        string metadataURI;
    }

    struct Snapshot {
        bytes32 root;
        address publisher;
        uint48 recordCount;
        uint48 publishedAt;
    }

    /// @notice EIP-712 type of a signed snapshot publication (relayed by anyone).
    bytes32 public constant PUBLISH_SNAPSHOT_TYPEHASH =
        keccak256("PublishSnapshot(bytes32 datanetId,bytes32 root,uint48 recordCount,uint256 nonce,uint256 deadline)");

    mapping(bytes32 datanetId => Datanet) private _datanets;
    mapping(bytes32 datanetId => Snapshot[]) private _snapshots;
    // NOTE: curators live under a generation that an ownership transfer bumps, which clears
    //       them all in O(1) without enumerating the set.
    mapping(bytes32 datanetId => uint256) private _curatorGeneration;
    mapping(bytes32 datanetId => mapping(uint256 generation => mapping(address account => bool))) private _curators;
    mapping(bytes32 datanetId => address) private _pendingOwners;

    event DatanetRegistered(
        bytes32 indexed datanetId,
        address indexed owner,
        string name,
        bytes32 schemaHash,
        bytes32 metadataHash,
        string metadataURI
    );
    event MetadataUpdated(bytes32 indexed datanetId, bytes32 metadataHash, string metadataURI);
    event CuratorSet(bytes32 indexed datanetId, address indexed curator, bool allowed);
    event DatanetOwnershipTransferStarted(
        bytes32 indexed datanetId, address indexed previousOwner, address indexed newOwner
    );
    event CuratorsCleared(bytes32 indexed datanetId, uint256 generation);
    event DatanetOwnershipTransferred(
        bytes32 indexed datanetId, address indexed previousOwner, address indexed newOwner
    );
    event SnapshotPublished(
        bytes32 indexed datanetId, uint256 indexed index, bytes32 root, uint48 recordCount, address indexed publisher
    );

    error EmptyName();
    error ZeroAddress();
    error ZeroRoot();
    error DatanetAlreadyRegistered(bytes32 datanetId);
    error UnknownDatanet(bytes32 datanetId);
    error NotDatanetOwner(bytes32 datanetId, address account);
    error NotPendingOwner(bytes32 datanetId, address account);
    error NotPublisher(bytes32 datanetId, address account);
    error UnknownSnapshot(bytes32 datanetId, uint256 index);
    error SignatureExpired(uint256 deadline);
    error InvalidSignature(address signer);

    constructor() EIP712("OpenLedger DatanetRegistry", "1") {}

    /// @notice The id a datanet named `name` gets when `owner` registers it.
    function datanetIdOf(address owner, string calldata name) public pure returns (bytes32) {
        return keccak256(abi.encode(owner, keccak256(bytes(name))));
    }

    /// @notice The Merkle leaf of one record, as StandardMerkleTree builds it.
    function recordLeaf(bytes32 recordHash, address contributor) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(recordHash, contributor))));
    }

    /// @notice Register a datanet owned by the caller.
    function registerDatanet(
        string calldata name,
        bytes32 schemaHash,
        bytes32 metadataHash,
        string calldata metadataURI
    ) external returns (bytes32 datanetId) {
        if (bytes(name).length == 0) revert EmptyName();
        datanetId = datanetIdOf(msg.sender, name);
        if (_datanets[datanetId].owner != address(0)) revert DatanetAlreadyRegistered(datanetId);
        _datanets[datanetId] = Datanet(msg.sender, uint64(block.timestamp), schemaHash, metadataHash, name, metadataURI);
        emit DatanetRegistered(datanetId, msg.sender, name, schemaHash, metadataHash, metadataURI);
    }

    /// @notice Replace a datanet's metadata hash and URI (owner only).
    function updateMetadata(bytes32 datanetId, bytes32 metadataHash, string calldata metadataURI) external {
        _requireOwner(datanetId, msg.sender);
        Datanet storage datanet = _datanets[datanetId];
        datanet.metadataHash = metadataHash;
        datanet.metadataURI = metadataURI;
        emit MetadataUpdated(datanetId, metadataHash, metadataURI);
    }

    /// @notice Allow or disallow `curator` to publish snapshots (owner only).
    function setCurator(bytes32 datanetId, address curator, bool allowed) external {
        _requireOwner(datanetId, msg.sender);
        if (curator == address(0)) revert ZeroAddress();
        _curators[datanetId][_curatorGeneration[datanetId]][curator] = allowed;
        emit CuratorSet(datanetId, curator, allowed);
    }

    /// @notice Offer a datanet to `newOwner`, who must accept it (owner only); the zero
    ///         address withdraws a pending offer.
    function transferDatanetOwnership(bytes32 datanetId, address newOwner) external {
        _requireOwner(datanetId, msg.sender);
        _pendingOwners[datanetId] = newOwner;
        emit DatanetOwnershipTransferStarted(datanetId, msg.sender, newOwner);
    }

    /// @notice Take over a datanet offered to the caller; every curator is cleared.
    function acceptDatanetOwnership(bytes32 datanetId) external {
        if (_pendingOwners[datanetId] != msg.sender || msg.sender == address(0)) {
            revert NotPendingOwner(datanetId, msg.sender);
        }
        address previous = _datanets[datanetId].owner;
        delete _pendingOwners[datanetId];
        _datanets[datanetId].owner = msg.sender;
        uint256 generation = ++_curatorGeneration[datanetId];
        emit CuratorsCleared(datanetId, generation);
        emit DatanetOwnershipTransferred(datanetId, previous, msg.sender);
    }

    /// @notice The address a datanet is offered to, or zero.
    function pendingOwner(bytes32 datanetId) external view returns (address) {
        return _pendingOwners[datanetId];
    }

    /// @notice Append a snapshot root (owner or curator); returns its index.
    function publishSnapshot(bytes32 datanetId, bytes32 root, uint48 recordCount) external returns (uint256) {
        _requirePublisher(datanetId, msg.sender);
        return _publish(datanetId, root, recordCount, msg.sender);
    }

    /// @notice Append a snapshot root authorised by an EIP-712 signature of the owner or a
    ///         curator; anyone may relay it. Each signature is usable once (per-signer nonce).
    function publishSnapshotBySig(
        bytes32 datanetId,
        bytes32 root,
        uint48 recordCount,
        address signer,
        uint256 deadline,
        bytes calldata signature
    ) external returns (uint256) {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        bytes32 structHash =
            keccak256(abi.encode(PUBLISH_SNAPSHOT_TYPEHASH, datanetId, root, recordCount, _useNonce(signer), deadline));
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(_hashTypedDataV4(structHash), signature);
        if (err != ECDSA.RecoverError.NoError || recovered != signer) revert InvalidSignature(signer);
        _requirePublisher(datanetId, signer);
        return _publish(datanetId, root, recordCount, signer);
    }

    /// @notice Whether `(recordHash, contributor)` is a leaf of the snapshot at `index`.
    function containsRecord(
        bytes32 datanetId,
        uint256 index,
        bytes32 recordHash,
        address contributor,
        bytes32[] calldata proof
    ) external view returns (bool) {
        bytes32 root = getSnapshot(datanetId, index).root;
        return MerkleProof.verifyCalldata(proof, root, recordLeaf(recordHash, contributor));
    }

    /// @notice A registered datanet; reverts with `UnknownDatanet` if there is none.
    function getDatanet(bytes32 datanetId) public view returns (Datanet memory) {
        Datanet memory datanet = _datanets[datanetId];
        if (datanet.owner == address(0)) revert UnknownDatanet(datanetId);
        return datanet;
    }

    /// @notice The snapshot at `index`; reverts with `UnknownSnapshot` past the end.
    function getSnapshot(bytes32 datanetId, uint256 index) public view returns (Snapshot memory) {
        Snapshot[] storage snapshots = _snapshots[datanetId];
        if (index >= snapshots.length) revert UnknownSnapshot(datanetId, index);
        return snapshots[index];
    }

    /// @notice How many snapshots a datanet has published.
    function snapshotCount(bytes32 datanetId) external view returns (uint256) {
        return _snapshots[datanetId].length;
    }

    /// @notice Whether `account` may publish snapshots of the datanet.
    function isPublisher(bytes32 datanetId, address account) public view returns (bool) {
        return _datanets[datanetId].owner == account || _curators[datanetId][_curatorGeneration[datanetId]][account];
    }

    /// @notice The EIP-712 domain separator of this registry.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _publish(bytes32 datanetId, bytes32 root, uint48 recordCount, address publisher)
        private
        returns (uint256 index)
    {
        if (root == bytes32(0)) revert ZeroRoot();
        Snapshot[] storage snapshots = _snapshots[datanetId];
        index = snapshots.length;
        snapshots.push(Snapshot(root, publisher, recordCount, uint48(block.timestamp)));
        emit SnapshotPublished(datanetId, index, root, recordCount, publisher);
    }

    function _requireOwner(bytes32 datanetId, address account) private view {
        address owner = _datanets[datanetId].owner;
        if (owner == address(0)) revert UnknownDatanet(datanetId);
        if (owner != account) revert NotDatanetOwner(datanetId, account);
    }

    function _requirePublisher(bytes32 datanetId, address account) private view {
        if (_datanets[datanetId].owner == address(0)) revert UnknownDatanet(datanetId);
        if (!isPublisher(datanetId, account)) revert NotPublisher(datanetId, account);
    }
}

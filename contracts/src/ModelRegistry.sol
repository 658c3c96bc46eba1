// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title ModelRegistry
/// @notice Fine-tuned models and adapters, identified by their registrant and manifest.
/// @dev `manifestHash` is a pure function of the manifest; the model id binds it to the
///      address that registered it: `modelId = keccak256(abi.encode(registrant, manifestHash))`.
///      A pending registration therefore cannot be front-run and a public manifest cannot be
///      squatted: anyone else registering the same manifest gets a different id, whose
///      registrant shows who claimed it. The id never changes, ownership may (two steps).
contract ModelRegistry {
    enum Status {
        None,
        Active,
        Deprecated
    }

    /// @notice What a model was made of; its hash is the manifest hash.
    struct Manifest {
        bytes32 adapterWeightsHash;
        string baseModel;
        bytes32 recipeHash;
        bytes32[] datanetRoots;
        bytes32 trainingLogRoot;
    }

    struct Model {
        address owner;
        Status status;
        uint64 registeredAt;
        address registrant;
        uint256 pricePer1kTokens;
        Manifest manifest;
    }

    /// @notice Domain tag hashed in front of every manifest, so a manifest hash never equals
    ///         another hash of the same fields.
    bytes32 public constant MANIFEST_TAG = keccak256("openledger.ModelManifest.v1");

    mapping(bytes32 modelId => Model) private _models;
    mapping(bytes32 modelId => address) private _pendingOwners;

    event ModelRegistered(
        bytes32 indexed modelId,
        address indexed owner,
        bytes32 indexed manifestHash,
        bytes32 adapterWeightsHash,
        string baseModel,
        bytes32 recipeHash,
        bytes32[] datanetRoots,
        bytes32 trainingLogRoot,
        uint256 pricePer1kTokens
    );
    event PriceChanged(bytes32 indexed modelId, uint256 pricePer1kTokens);
    event StatusChanged(bytes32 indexed modelId, Status status);
    event ModelOwnershipTransferStarted(
        bytes32 indexed modelId, address indexed previousOwner, address indexed newOwner
    );
    event ModelOwnershipTransferred(bytes32 indexed modelId, address indexed previousOwner, address indexed newOwner);

    error ZeroWeightsHash();
    error EmptyBaseModel();
    error InvalidStatus(Status status);
    error ModelAlreadyRegistered(bytes32 modelId);
    error UnknownModel(bytes32 modelId);
    error NotModelOwner(bytes32 modelId, address account);
    error NotPendingOwner(bytes32 modelId, address account);

    /// @notice The hash of a manifest: `keccak256(abi.encode(MANIFEST_TAG, adapterWeightsHash,
    ///         baseModel, recipeHash, datanetRoots, trainingLogRoot))`.
    function manifestHashOf(Manifest calldata m) public pure returns (bytes32) {
        return keccak256(
            abi.encode(MANIFEST_TAG, m.adapterWeightsHash, m.baseModel, m.recipeHash, m.datanetRoots, m.trainingLogRoot)
        );
    }

    /// @notice The id `registrant` gets for `m`: `keccak256(abi.encode(registrant, manifestHashOf(m)))`.
    function modelIdOf(address registrant, Manifest calldata m) public pure returns (bytes32) {
        return keccak256(abi.encode(registrant, manifestHashOf(m)));
    }

    /// @notice Register a model owned by the caller, active at `pricePer1kTokens` wei.
    function registerModel(Manifest calldata manifest, uint256 pricePer1kTokens) external returns (bytes32 modelId) {
        if (manifest.adapterWeightsHash == bytes32(0)) revert ZeroWeightsHash();
        if (bytes(manifest.baseModel).length == 0) revert EmptyBaseModel();
        bytes32 manifestHash = manifestHashOf(manifest);
        modelId = keccak256(abi.encode(msg.sender, manifestHash));
        Model storage model = _models[modelId];
        if (model.owner != address(0)) revert ModelAlreadyRegistered(modelId);
        model.owner = msg.sender;
        model.status = Status.Active;
        model.registeredAt = uint64(block.timestamp);
        model.registrant = msg.sender;
        model.pricePer1kTokens = pricePer1kTokens;
        model.manifest = manifest;
        emit ModelRegistered(
            modelId,
            msg.sender,
            manifestHash,
            manifest.adapterWeightsHash,
            manifest.baseModel,
            manifest.recipeHash,
            manifest.datanetRoots,
            manifest.trainingLogRoot,
            pricePer1kTokens
        );
    }

    /// @notice Change the price per 1,000 tokens (owner only).
    function setPrice(bytes32 modelId, uint256 pricePer1kTokens) external {
        _requireOwner(modelId, msg.sender);
        _models[modelId].pricePer1kTokens = pricePer1kTokens;
        emit PriceChanged(modelId, pricePer1kTokens);
    }

    /// @notice Mark a model active or deprecated (owner only).
    function setStatus(bytes32 modelId, Status status) external {
        _requireOwner(modelId, msg.sender);
        if (status == Status.None) revert InvalidStatus(status);
        _models[modelId].status = status;
        emit StatusChanged(modelId, status);
    }

    /// @notice Offer a model to `newOwner`, who must accept it (owner only); the zero address
    ///         withdraws a pending offer.
    function transferModelOwnership(bytes32 modelId, address newOwner) external {
        _requireOwner(modelId, msg.sender);
        _pendingOwners[modelId] = newOwner;
        emit ModelOwnershipTransferStarted(modelId, msg.sender, newOwner);
    }

    /// @notice Take over a model offered to the caller.
    function acceptModelOwnership(bytes32 modelId) external {
        if (_pendingOwners[modelId] != msg.sender || msg.sender == address(0)) {
            revert NotPendingOwner(modelId, msg.sender);
        }
        address previous = _models[modelId].owner;
        delete _pendingOwners[modelId];
        _models[modelId].owner = msg.sender;
        emit ModelOwnershipTransferred(modelId, previous, msg.sender);
    }

    /// @notice The address a model is offered to, or zero.
    function pendingOwner(bytes32 modelId) external view returns (address) {
        return _pendingOwners[modelId];
    }

    /// @notice A registered model; reverts with `UnknownModel` if there is none.
    function getModel(bytes32 modelId) external view returns (Model memory) {
        Model memory model = _models[modelId];
        if (model.owner == address(0)) revert UnknownModel(modelId);
        return model;
    }

    /// @notice Whether a model with this id is registered.
    function isRegistered(bytes32 modelId) external view returns (bool) {
        return _models[modelId].owner != address(0);
    }

    function _requireOwner(bytes32 modelId, address account) private view {
        address owner = _models[modelId].owner;
        if (owner == address(0)) revert UnknownModel(modelId);
        if (owner != account) revert NotModelOwner(modelId, account);
    }
}

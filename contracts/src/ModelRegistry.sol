// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title ModelRegistry
/// @notice Fine-tuned models and adapters, identified by their training manifest.
/// @dev The model id is a pure function of the manifest (see `modelIdOf`), so anyone holding
///      the manifest can recompute it off chain and check that the registry agrees.
contract ModelRegistry {
    enum Status {
        None,
        Active,
        Deprecated
    }

    /// @notice What a model was made of; its hash is the model id.
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
        uint256 pricePer1kTokens;
        Manifest manifest;
    }

    /// @notice Domain tag hashed in front of every manifest, so a model id never equals
    ///         another hash of the same fields.
    bytes32 public constant MANIFEST_TAG = keccak256("openledger.ModelManifest.v1");

    mapping(bytes32 modelId => Model) private _models;

    event ModelRegistered(
        bytes32 indexed modelId,
        address indexed owner,
        bytes32 adapterWeightsHash,
        string baseModel,
        bytes32 recipeHash,
        bytes32[] datanetRoots,
        bytes32 trainingLogRoot,
        uint256 pricePer1kTokens
    );
    event PriceChanged(bytes32 indexed modelId, uint256 pricePer1kTokens);
    event StatusChanged(bytes32 indexed modelId, Status status);
    event ModelOwnershipTransferred(bytes32 indexed modelId, address indexed previousOwner, address indexed newOwner);

    error ZeroWeightsHash();
    error EmptyBaseModel();
    error ZeroAddress();
    error InvalidStatus(Status status);
    error ModelAlreadyRegistered(bytes32 modelId);
    error UnknownModel(bytes32 modelId);
    error NotModelOwner(bytes32 modelId, address account);

    /// @notice The id of a manifest: `keccak256(abi.encode(MANIFEST_TAG, adapterWeightsHash,
    ///         baseModel, recipeHash, datanetRoots, trainingLogRoot))`.
    function modelIdOf(Manifest calldata m) public pure returns (bytes32) {
        return keccak256(
            abi.encode(MANIFEST_TAG, m.adapterWeightsHash, m.baseModel, m.recipeHash, m.datanetRoots, m.trainingLogRoot)
        );
    }

    /// @notice Register a model owned by the caller, active at `pricePer1kTokens` wei.
    function registerModel(Manifest calldata manifest, uint256 pricePer1kTokens) external returns (bytes32 modelId) {
        if (manifest.adapterWeightsHash == bytes32(0)) revert ZeroWeightsHash();
        if (bytes(manifest.baseModel).length == 0) revert EmptyBaseModel();
        modelId = modelIdOf(manifest);
        Model storage model = _models[modelId];
        if (model.owner != address(0)) revert ModelAlreadyRegistered(modelId);
        model.owner = msg.sender;
        model.status = Status.Active;
        model.registeredAt = uint64(block.timestamp);
        model.pricePer1kTokens = pricePer1kTokens;
        model.manifest = manifest;
        emit ModelRegistered(
            modelId,
            msg.sender,
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

    /// @notice Hand a model to a new owner (owner only).
    function transferModelOwnership(bytes32 modelId, address newOwner) external {
        _requireOwner(modelId, msg.sender);
        if (newOwner == address(0)) revert ZeroAddress();
        _models[modelId].owner = newOwner;
        emit ModelOwnershipTransferred(modelId, msg.sender, newOwner);
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

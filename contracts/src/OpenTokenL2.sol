// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {ILegacyMintableERC20, IOptimismMintableERC20} from "./interfaces/IOptimismMintableERC20.sol";

/// @title OpenTokenL2
/// @notice OPEN on an OP Stack L2: the standard bridge is its only minter and burner, so
///         every L2 token is backed by one locked in the bridge on L1 (where `OpenToken`'s
///         cap holds).
/// @dev Implements `IOptimismMintableERC20` and the legacy `ILegacyMintableERC20`, and says so
///      through ERC-165, which is how `L2StandardBridge` recognises a token it may mint. The
///      same contract is what `OptimismMintableERC20Factory` would create, with the name
///      and symbol fixed.
contract OpenTokenL2 is ERC20, IOptimismMintableERC20, ILegacyMintableERC20 {
    /// @notice The L2 standard bridge (0x4200000000000000000000000000000000000010 on OP Stack).
    address public immutable BRIDGE;

    /// @notice The token on L1 that this one represents.
    address public immutable REMOTE_TOKEN;

    event Mint(address indexed account, uint256 amount);
    event Burn(address indexed account, uint256 amount);

    error NotBridge(address caller);
    error ZeroAddress();

    /// @param bridge_ The L2 standard bridge.
    /// @param remoteToken_ The L1 `OpenToken`.
    constructor(address bridge_, address remoteToken_) ERC20("OpenLedger Token", "OPEN") {
        if (bridge_ == address(0) || remoteToken_ == address(0)) revert ZeroAddress();
        BRIDGE = bridge_;
        REMOTE_TOKEN = remoteToken_;
    }

    modifier onlyBridge() {
        if (msg.sender != BRIDGE) revert NotBridge(msg.sender);
        _;
    }

    /// @notice Mint tokens deposited on L1 (the bridge only).
    function mint(address to, uint256 amount)
        external
        override(IOptimismMintableERC20, ILegacyMintableERC20)
        onlyBridge
    {
        _mint(to, amount);
        emit Mint(to, amount);
    }

    /// @notice Burn tokens withdrawn to L1 (the bridge only).
    function burn(address from, uint256 amount)
        external
        override(IOptimismMintableERC20, ILegacyMintableERC20)
        onlyBridge
    {
        _burn(from, amount);
        emit Burn(from, amount);
    }

    /// @notice ERC-165: IERC165, IOptimismMintableERC20 and ILegacyMintableERC20.
    function supportsInterface(bytes4 interfaceId) external pure override returns (bool) {
        return interfaceId == type(IERC165).interfaceId || interfaceId == type(IOptimismMintableERC20).interfaceId
            || interfaceId == type(ILegacyMintableERC20).interfaceId;
    }

    /// @notice The L1 token (IOptimismMintableERC20).
    function remoteToken() external view returns (address) {
        return REMOTE_TOKEN;
    }

    /// @notice The L1 token (legacy name).
    function l1Token() external view returns (address) {
        return REMOTE_TOKEN;
    }

    /// @notice The bridge (IOptimismMintableERC20).
    function bridge() external view returns (address) {
        return BRIDGE;
    }

    /// @notice The bridge (legacy name).
    function l2Bridge() external view returns (address) {
        return BRIDGE;
    }
}

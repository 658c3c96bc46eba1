// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";

/// @notice What the OP Stack standard bridge asks of an L2 token it mints and burns, as the
///         bridge declares it (`IOptimismMintableERC20`, interface id 0xec4fc8e3).
interface IOptimismMintableERC20 is IERC165 {
    function remoteToken() external view returns (address);
    function bridge() external returns (address);
    function mint(address to, uint256 amount) external;
    function burn(address from, uint256 amount) external;
}

/// @notice The bridge's legacy interface (`ILegacyMintableERC20`, interface id 0x1d1d8b63),
///         which it still accepts.
interface ILegacyMintableERC20 is IERC165 {
    function l1Token() external view returns (address);
    function mint(address to, uint256 amount) external;
    function burn(address from, uint256 amount) external;
}

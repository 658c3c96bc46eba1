// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {
    AccessControlDefaultAdminRules
} from "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Capped} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Capped.sol";

/// @title OpenToken
/// @notice The reward and staking token of local and test deployments; real networks point
///         the protocol at the existing token instead.
/// @dev Supply never exceeds `cap()`. Only `MINTER_ROLE` mints; the admin role moves in two
///      steps after `ADMIN_TRANSFER_DELAY` (OpenZeppelin `AccessControlDefaultAdminRules`).
contract OpenToken is ERC20Capped, AccessControlDefaultAdminRules {
    /// @notice Role allowed to mint, up to the cap.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @notice Seconds between starting and accepting an admin transfer.
    uint48 public constant ADMIN_TRANSFER_DELAY = 1 days;

    /// @param admin Default admin and first minter.
    /// @param holder Receives `initialSupply`.
    /// @param initialSupply Tokens minted to `holder` at deployment (at most `supplyCap`).
    /// @param supplyCap The most tokens that can ever exist.
    constructor(address admin, address holder, uint256 initialSupply, uint256 supplyCap)
        ERC20("OpenLedger Token", "OPEN")
        ERC20Capped(supplyCap)
        AccessControlDefaultAdminRules(ADMIN_TRANSFER_DELAY, admin)
    {
        _grantRole(MINTER_ROLE, admin);
        _mint(holder, initialSupply);
    }

    /// @notice Create `amount` new tokens for `to` (minter only; reverts past the cap).
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }
}

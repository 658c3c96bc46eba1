// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title OpenToken
/// @notice The reward token of local and test deployments; real networks point the
///         protocol at the existing token instead.
contract OpenToken is ERC20, Ownable {
    constructor(address initialOwner, uint256 initialSupply) ERC20("OpenLedger Token", "OPEN") Ownable(initialOwner) {
        _mint(initialOwner, initialSupply);
    }

    /// @notice Create `amount` new tokens for `to` (owner only).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}

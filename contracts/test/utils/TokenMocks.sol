// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice An ERC-20 that keeps 1% of every transfer between two holders (a fee-on-transfer
///         token), to check that contracts refuse or account for short deliveries.
contract FeeOnTransferToken is ERC20 {
    address public constant FEE_SINK = address(0xFEE);

    constructor(address holder, uint256 supply) ERC20("Fee Token", "FEE") {
        _mint(holder, supply);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0) || value < 100) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = value / 100;
        super._update(from, FEE_SINK, fee);
        super._update(from, to, value - fee);
    }
}

/// @notice An ERC-20 that, once armed, calls back into a target during its next transfer
///         (as a hostile or hook-carrying token would) and records how the call ended.
contract ReenteringToken is ERC20 {
    address public target;
    bytes public payload;
    bool public attempted;
    bool public reentered;
    bytes public reentryRevertData;

    constructor(address holder, uint256 supply) ERC20("Reentering Token", "RE") {
        _mint(holder, supply);
    }

    /// @notice Call `target_` with `payload_` inside the next transfer between holders.
    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        attempted = false;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (target == address(0) || attempted || from == address(0)) return;
        attempted = true;
        (bool ok, bytes memory data) = target.call(payload);
        reentered = ok;
        reentryRevertData = data;
    }
}

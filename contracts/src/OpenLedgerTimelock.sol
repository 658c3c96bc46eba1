// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title OpenLedgerTimelock
/// @notice The protocol's treasury and, on governed deployments, the admin of its parameters:
///         an OpenZeppelin `TimelockController` whose proposer is the `OpenLedgerGovernor`.
/// @dev Deployed with the deployer as a temporary admin, which grants the governor its
///      proposer and canceller roles and then renounces (see docs/chain.md).
contract OpenLedgerTimelock is TimelockController {
    /// @param minDelay Seconds between queueing and executing an operation.
    /// @param proposers Accounts that may schedule and cancel (the governor).
    /// @param executors Accounts that may execute (`address(0)`: anyone).
    /// @param admin Optional temporary admin for setup (`address(0)`: none).
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelay, proposers, executors, admin)
    {}
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {AttributionRewards} from "../../src/AttributionRewards.sol";
import {ContributionVotes} from "../../src/ContributionVotes.sol";
import {OpenLedgerGovernor} from "../../src/OpenLedgerGovernor.sol";
import {OpenLedgerTimelock} from "../../src/OpenLedgerTimelock.sol";
import {OpenToken} from "../../src/OpenToken.sol";
import {TestBase, TestMerkle} from "./TestBase.sol";

/// @notice The governed protocol as `deploy_protocol(governed=True)` wires it: the timelock
///         is the treasury and the rewards admin, the governor its only proposer.
abstract contract GovernanceSetup is TestBase {
    uint48 internal constant VOTING_DELAY = 1 days;
    uint32 internal constant VOTING_PERIOD = 5 days;
    uint256 internal constant MIN_DELAY = 2 days;
    uint256 internal constant THRESHOLD = 1e18;
    uint256 internal constant QUORUM_PERCENT = 4;

    OpenToken internal token;
    AttributionRewards internal rewards;
    ContributionVotes internal votes;
    OpenLedgerTimelock internal timelock;
    OpenLedgerGovernor internal governor;

    function _deployGovernance() internal {
        vm.warp(1000);
        address[] memory none = new address[](0);
        address[] memory anyone = new address[](1);
        timelock = new OpenLedgerTimelock(MIN_DELAY, none, anyone, address(this));
        token = new OpenToken(address(timelock), address(this), 1e30, 1e31);
        rewards = new AttributionRewards(token, address(timelock), address(this), address(timelock), 1 hours);
        votes = rewards.votes();
        governor = new OpenLedgerGovernor(votes, timelock, VOTING_DELAY, VOTING_PERIOD, THRESHOLD, QUORUM_PERCENT);
        timelock.grantRole(timelock.PROPOSER_ROLE(), address(governor));
        timelock.grantRole(timelock.CANCELLER_ROLE(), address(governor));
        timelock.renounceRole(timelock.DEFAULT_ADMIN_ROLE(), address(this));
        token.approve(address(rewards), type(uint256).max);
    }

    /// Post epoch `epochId` paying `amounts[i]` to `accounts[i]` and claim every payout.
    function _payAndClaim(uint256 epochId, address[] memory accounts, uint256[] memory amounts) internal {
        bytes32[] memory leaves = new bytes32[](accounts.length);
        uint256 total;
        for (uint256 i; i < accounts.length; ++i) {
            leaves[i] = rewards.rewardLeaf(accounts[i], amounts[i]);
            total += amounts[i];
        }
        rewards.postEpoch(epochId, TestMerkle.root(leaves), total, uint64(block.timestamp + 7 days));
        for (uint256 i; i < accounts.length; ++i) {
            rewards.claimFor(epochId, accounts[i], amounts[i], TestMerkle.proof(leaves, i));
        }
    }
}

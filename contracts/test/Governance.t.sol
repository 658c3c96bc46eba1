// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IGovernor} from "@openzeppelin/contracts/governance/IGovernor.sol";
import {ContributionVotes} from "../src/ContributionVotes.sol";
import {GovernanceSetup} from "./utils/GovernanceSetup.sol";

contract GovernanceTest is GovernanceSetup {
    address internal constant ALICE = address(0xA11CE);
    address internal constant BOB = address(0xB0B);
    address internal constant CAROL = address(0xCA201);
    address internal constant GRANTEE = address(0x6A27);

    uint8 internal constant AGAINST = 0;
    uint8 internal constant FOR = 1;

    function setUp() public {
        _deployGovernance();
        address[] memory accounts = new address[](3);
        (accounts[0], accounts[1], accounts[2]) = (ALICE, BOB, CAROL);
        uint256[] memory amounts = new uint256[](3);
        (amounts[0], amounts[1], amounts[2]) = (60e18, 30e18, 10e18);
        _payAndClaim(1, accounts, amounts);
        token.transfer(address(timelock), 1000e18); // the treasury holds OPEN
        vm.warp(block.timestamp + 1);
    }

    function test_claimsEarnSelfDelegatedVotes() public view {
        assertEq(votes.getVotes(ALICE), 60e18, "alice's votes");
        assertEq(votes.delegates(ALICE), ALICE, "delegated to herself on first earning");
        assertEq(votes.earned(BOB), 30e18, "bob earned");
        assertEq(votes.totalEarned(), 100e18, "total earned = total claimed");
        assertEq(votes.getPastTotalSupply(block.timestamp - 1), 100e18, "checkpointed total");
        assertEq(keccak256(bytes(votes.CLOCK_MODE())), keccak256("mode=timestamp"), "timestamp clock");
    }

    function test_transfersOfOpenMoveNoVotes() public {
        vm.prank(ALICE);
        token.transfer(GRANTEE, 60e18);
        assertEq(token.balanceOf(ALICE), 0, "alice sold every token");
        assertEq(votes.getVotes(ALICE), 60e18, "her votes stay");
        assertEq(votes.getVotes(GRANTEE), 0, "the buyer gets none");
    }

    function test_onlyTheRewardsContractEarnsVotes() public {
        vm.expectRevert(abi.encodeWithSelector(ContributionVotes.NotRewards.selector, address(this)));
        votes.earn(address(this), 1e18);
        assertEq(votes.rewards(), address(rewards), "minted by the rewards contract only");
    }

    function test_votesMoveOnlyByDelegationAndNeverToZero() public {
        vm.prank(CAROL);
        votes.delegate(ALICE);
        assertEq(votes.getVotes(ALICE), 70e18, "carol's units counted by alice");
        assertEq(votes.getVotes(CAROL), 0, "carol delegated hers");
        assertEq(votes.earned(CAROL), 10e18, "carol still earned them");
        vm.expectRevert(ContributionVotes.ZeroDelegatee.selector);
        vm.prank(CAROL);
        votes.delegate(address(0));
    }

    function test_treasuryGrantPassesByContributionAndRunsAfterTheTimelock() public {
        (uint256 id, address[] memory targets, uint256[] memory values, bytes[] memory calls) = _proposeGrant(5e18);
        vm.warp(block.timestamp + VOTING_DELAY + 1);
        _vote(id, ALICE, FOR);
        _vote(id, BOB, AGAINST);
        _vote(id, CAROL, FOR);
        (uint256 against, uint256 yes,) = governor.proposalVotes(id);
        assertEq(yes, 70e18, "for = alice + carol");
        assertEq(against, 30e18, "against = bob");
        vm.warp(block.timestamp + VOTING_PERIOD);
        assertTrue(governor.state(id) == IGovernor.ProposalState.Succeeded, "succeeded");
        bytes32 description = keccak256("Grant 5 OPEN");
        governor.queue(targets, values, calls, description);
        vm.expectRevert();
        governor.execute(targets, values, calls, description);
        vm.warp(block.timestamp + MIN_DELAY);
        governor.execute(targets, values, calls, description);
        assertTrue(governor.state(id) == IGovernor.ProposalState.Executed, "executed");
        assertEq(token.balanceOf(GRANTEE), 5e18, "paid from the treasury");
    }

    function test_votesEarnedAfterTheSnapshotDoNotCount() public {
        (uint256 id,,,) = _proposeGrant(1e18);
        address[] memory accounts = new address[](1);
        accounts[0] = BOB;
        uint256[] memory amounts = new uint256[](1);
        amounts[0] = 500e18;
        vm.warp(block.timestamp + VOTING_DELAY + 1);
        _payAndClaim(2, accounts, amounts); // after the snapshot
        assertEq(votes.getVotes(BOB), 530e18, "bob's current votes");
        _vote(id, ALICE, FOR);
        _vote(id, BOB, AGAINST);
        (uint256 against, uint256 yes,) = governor.proposalVotes(id);
        assertEq(against, 30e18, "bob votes with his snapshot weight");
        assertEq(yes, 60e18, "alice");
        vm.warp(block.timestamp + VOTING_PERIOD);
        assertTrue(governor.state(id) == IGovernor.ProposalState.Succeeded, "alice's majority");
    }

    function test_aMajorityAgainstDefeatsAProposal() public {
        (uint256 id,,,) = _proposeGrant(1e18);
        vm.warp(block.timestamp + VOTING_DELAY + 1);
        _vote(id, ALICE, AGAINST);
        _vote(id, CAROL, FOR);
        vm.warp(block.timestamp + VOTING_PERIOD);
        assertTrue(governor.state(id) == IGovernor.ProposalState.Defeated, "defeated");
    }

    function test_proposingNeedsEarnedVotes() public {
        address[] memory targets = new address[](1);
        targets[0] = address(token);
        uint256[] memory values = new uint256[](1);
        bytes[] memory calls = new bytes[](1);
        calls[0] = abi.encodeCall(token.transfer, (GRANTEE, 1));
        vm.expectRevert(
            abi.encodeWithSelector(IGovernor.GovernorInsufficientProposerVotes.selector, GRANTEE, 0, THRESHOLD)
        );
        vm.prank(GRANTEE);
        governor.propose(targets, values, calls, "Grant");
    }

    function test_governanceSetsProtocolParametersThroughTheTimelock() public {
        address[] memory targets = new address[](1);
        targets[0] = address(rewards);
        uint256[] memory values = new uint256[](1);
        bytes[] memory calls = new bytes[](1);
        calls[0] = abi.encodeCall(rewards.setMinClaimWindow, (uint64(3 days)));
        vm.prank(ALICE);
        uint256 id = governor.propose(targets, values, calls, "Longer claim windows");
        vm.warp(block.timestamp + VOTING_DELAY + 1);
        _vote(id, ALICE, FOR);
        vm.warp(block.timestamp + VOTING_PERIOD);
        governor.queue(targets, values, calls, keccak256("Longer claim windows"));
        vm.warp(block.timestamp + MIN_DELAY);
        governor.execute(targets, values, calls, keccak256("Longer claim windows"));
        assertEq(rewards.minClaimWindow(), 3 days, "set by governance");
        assertEq(rewards.defaultAdmin(), address(timelock), "the timelock is the admin");
    }

    function test_nobodyButTheGovernorSchedulesOnTheTimelock() public {
        bytes32 proposer = timelock.PROPOSER_ROLE();
        assertTrue(timelock.hasRole(proposer, address(governor)), "governor proposes");
        assertTrue(!timelock.hasRole(timelock.DEFAULT_ADMIN_ROLE(), address(this)), "deployer renounced");
        vm.expectRevert();
        timelock.schedule(address(token), 0, abi.encodeCall(token.transfer, (GRANTEE, 1)), 0, 0, MIN_DELAY);
        assertEq(token.balanceOf(GRANTEE), 0, "nothing moved");
        assertEq(timelock.getMinDelay(), MIN_DELAY, "delay");
        assertTrue(rewards.hasRole(rewards.SETTLER_ROLE(), address(this)), "the deployer settles");
    }

    function _proposeGrant(uint256 amount)
        internal
        returns (uint256 id, address[] memory targets, uint256[] memory values, bytes[] memory calls)
    {
        targets = new address[](1);
        targets[0] = address(token);
        values = new uint256[](1);
        calls = new bytes[](1);
        calls[0] = abi.encodeCall(token.transfer, (GRANTEE, amount));
        string memory description = amount == 5e18 ? "Grant 5 OPEN" : "Grant";
        vm.prank(ALICE);
        id = governor.propose(targets, values, calls, description);
    }

    function _vote(uint256 id, address voter, uint8 support) internal {
        vm.prank(voter);
        governor.castVote(id, support);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {AttributionRewards} from "../src/AttributionRewards.sol";
import {ContributionVotes} from "../src/ContributionVotes.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {TestBase, TestMerkle} from "./utils/TestBase.sol";

/// @notice Drives claims, OPEN transfers and delegations in random order, counting what was
///         claimed and whether any token transfer changed anybody's votes.
contract VotesHandler is TestBase {
    uint256 internal constant ACCOUNTS = 4;

    AttributionRewards public immutable rewards;
    ContributionVotes public immutable votes;
    OpenToken public immutable token;
    uint256 public numEpochs;
    uint256 public claimed;
    uint256 public transfersThatMovedVotes;
    uint256 public numTransfers;
    mapping(address account => uint256) public claimedBy;
    mapping(uint256 epochId => uint256[]) internal _amounts;

    constructor(AttributionRewards rewards_, OpenToken token_) {
        rewards = rewards_;
        votes = rewards_.votes();
        token = token_;
        token_.approve(address(rewards_), type(uint256).max);
    }

    function account(uint256 i) public pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encode("voter", i)))));
    }

    function post(uint256 seed) external {
        uint256 epochId = ++numEpochs;
        bytes32[] memory leaves = new bytes32[](ACCOUNTS);
        uint256 total;
        for (uint256 i; i < ACCOUNTS; ++i) {
            uint256 amount = bound(uint256(keccak256(abi.encode(seed, i))), 1, 1e21);
            _amounts[epochId].push(amount);
            leaves[i] = rewards.rewardLeaf(account(i), amount);
            total += amount;
        }
        rewards.postEpoch(epochId, TestMerkle.root(leaves), total, uint64(block.timestamp + 30 days));
    }

    function claim(uint256 epochSeed, uint256 accountSeed) external {
        if (numEpochs == 0) return;
        uint256 epochId = bound(epochSeed, 1, numEpochs);
        uint256 i = accountSeed % ACCOUNTS;
        uint256 amount = _amounts[epochId][i];
        bytes32[] memory leaves = new bytes32[](ACCOUNTS);
        for (uint256 j; j < ACCOUNTS; ++j) {
            leaves[j] = rewards.rewardLeaf(account(j), _amounts[epochId][j]);
        }
        try rewards.claimFor(epochId, account(i), amount, TestMerkle.proof(leaves, i)) {
            claimed += amount;
            claimedBy[account(i)] += amount;
        } catch {}
    }

    function transfer(uint256 fromSeed, uint256 toSeed, uint256 amount) external {
        address from = account(fromSeed % ACCOUNTS);
        address to = account(toSeed % ACCOUNTS);
        amount = bound(amount, 0, token.balanceOf(from));
        uint256[ACCOUNTS] memory before;
        for (uint256 i; i < ACCOUNTS; ++i) {
            before[i] = votes.getVotes(account(i));
        }
        vm.prank(from);
        token.transfer(to, amount);
        ++numTransfers;
        for (uint256 i; i < ACCOUNTS; ++i) {
            if (votes.getVotes(account(i)) != before[i]) ++transfersThatMovedVotes;
        }
    }

    function delegate(uint256 fromSeed, uint256 toSeed) external {
        address from = account(fromSeed % ACCOUNTS);
        if (votes.earned(from) == 0) return; // nothing to delegate yet
        vm.prank(from);
        votes.delegate(account(toSeed % ACCOUNTS));
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 2 days));
    }

    function sumOfVotes() external view returns (uint256 sum) {
        for (uint256 i; i < ACCOUNTS; ++i) {
            sum += votes.getVotes(account(i));
        }
    }

    function accounts() external pure returns (uint256) {
        return ACCOUNTS;
    }
}

contract GovernanceInvariantTest is TestBase {
    OpenToken internal token;
    AttributionRewards internal rewards;
    VotesHandler internal handler;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 0, 1e40);
        rewards = new AttributionRewards(token, address(this), address(0), address(0x7ea5), 1 hours);
        handler = new VotesHandler(rewards, token);
        rewards.grantRole(rewards.SETTLER_ROLE(), address(handler));
        token.mint(address(handler), 1e30);
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_votesEqualClaimedRewards() public view {
        ContributionVotes votes = rewards.votes();
        assertEq(votes.totalEarned(), handler.claimed(), "total earned = total claimed");
        assertEq(handler.sumOfVotes(), handler.claimed(), "sum of votes = total claimed");
        for (uint256 i; i < handler.accounts(); ++i) {
            address who = handler.account(i);
            assertEq(votes.earned(who), handler.claimedBy(who), "earned = claimed, per account");
        }
    }

    function invariant_transfersOfOpenMoveNoVotes() public view {
        assertEq(handler.transfersThatMovedVotes(), 0, "a token transfer changed somebody's votes");
    }
}

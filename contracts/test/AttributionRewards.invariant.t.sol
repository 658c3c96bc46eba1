// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {AttributionRewards} from "../src/AttributionRewards.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {TestBase, TestMerkle} from "./utils/TestBase.sol";

/// @notice Drives the rewards contract through random posts, claims (repeats included),
///         sweeps and clock moves, keeping ghost books of what should be held and paid.
contract RewardsHandler is TestBase {
    uint256 internal constant ACCOUNTS = 4;

    AttributionRewards public immutable rewards;
    OpenToken public immutable token;
    uint256 public numEpochs;
    /// Sum of the unclaimed amounts of unswept epochs, as the handler counts them.
    uint256 public ghostOpen;
    /// How many claims succeeded for an account that had already been paid in that epoch.
    uint256 public repeatPayments;
    /// Successful claims and sweeps, to see that runs reach both.
    uint256 public numClaims;
    uint256 public numSweeps;
    mapping(uint256 epochId => uint256[]) internal _amounts;
    mapping(uint256 epochId => mapping(address account => uint256)) public payments;

    constructor(AttributionRewards rewards_, OpenToken token_) {
        rewards = rewards_;
        token = token_;
        token_.approve(address(rewards_), type(uint256).max);
    }

    function account(uint256 i) public pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encode("invariant account", i)))));
    }

    function post(uint256 seed, uint256 window) external {
        uint256 epochId = ++numEpochs;
        uint256 total;
        for (uint256 i; i < ACCOUNTS; ++i) {
            uint256 amount = bound(uint256(keccak256(abi.encode(seed, i))), 1, 1e21);
            _amounts[epochId].push(amount);
            total += amount;
        }
        uint64 deadline = uint64(block.timestamp + bound(window, 1 hours, 3 days));
        rewards.postEpoch(epochId, TestMerkle.root(_leaves(epochId)), total, deadline);
        ghostOpen += total;
    }

    function claim(uint256 epochSeed, uint256 accountSeed) external {
        if (numEpochs == 0) return;
        uint256 epochId = bound(epochSeed, 1, numEpochs);
        uint256 i = accountSeed % ACCOUNTS;
        uint256 amount = _amounts[epochId][i];
        bytes32[] memory proof = TestMerkle.proof(_leaves(epochId), i);
        try rewards.claimFor(epochId, account(i), amount, proof) {
            if (payments[epochId][account(i)] > 0) ++repeatPayments;
            payments[epochId][account(i)] += amount;
            ++numClaims;
            ghostOpen -= amount;
        } catch {}
    }

    function sweep(uint256 epochSeed) external {
        if (numEpochs == 0) return;
        try rewards.sweep(bound(epochSeed, 1, numEpochs)) returns (uint256 amount) {
            ghostOpen -= amount;
            ++numSweeps;
        } catch {}
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 2 days));
    }

    /// The sum of `remaining` over unswept epochs, read from the contract.
    function openRemaining() external view returns (uint256 sum) {
        for (uint256 e = 1; e <= numEpochs; ++e) {
            AttributionRewards.Epoch memory epoch = rewards.getEpoch(e);
            if (!epoch.swept) sum += epoch.remaining;
        }
    }

    function _leaves(uint256 epochId) internal view returns (bytes32[] memory leaves) {
        uint256[] storage amounts = _amounts[epochId];
        leaves = new bytes32[](amounts.length);
        for (uint256 i; i < amounts.length; ++i) {
            leaves[i] = rewards.rewardLeaf(account(i), amounts[i]);
        }
    }
}

contract AttributionRewardsInvariantTest is TestBase {
    OpenToken internal token;
    AttributionRewards internal rewards;
    RewardsHandler internal handler;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 0, 1e40);
        rewards = new AttributionRewards(token, address(this), address(0), address(0x7ea5), 1 hours);
        handler = new RewardsHandler(rewards, token);
        rewards.grantRole(rewards.SETTLER_ROLE(), address(handler));
        token.mint(address(handler), 1e30);
    }

    /// Only the handler is called by the fuzzer.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_balanceIsTheSumOfOpenRemaining() public view {
        uint256 held = token.balanceOf(address(rewards));
        assertEq(held, handler.openRemaining(), "balance = sum of remaining over unswept epochs");
        assertEq(held, handler.ghostOpen(), "balance = posted - claimed - swept");
    }

    function invariant_noAccountIsPaidTwice() public view {
        assertEq(handler.repeatPayments(), 0, "an account was paid twice in one epoch");
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {AttributionRewards} from "../src/AttributionRewards.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {TestBase, TestMerkle} from "./utils/TestBase.sol";
import {FeeOnTransferToken, ReenteringToken} from "./utils/TokenMocks.sol";

contract AttributionRewardsTest is TestBase {
    OpenToken internal token;
    AttributionRewards internal rewards;
    address internal constant SETTLER = address(0x5e771e7);
    address internal constant SINK = address(0x7ea5);
    uint64 internal constant DEADLINE = 1_000_000;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(SETTLER, SETTLER, 1e30, 1e31);
        rewards = new AttributionRewards(token, address(this), address(0), SINK, 1 hours);
        rewards.grantRole(rewards.SETTLER_ROLE(), SETTLER);
        vm.prank(SETTLER);
        token.approve(address(rewards), type(uint256).max);
    }

    function _recipient(uint256 i) internal pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encode("recipient", i)))));
    }

    function _leaves(uint256[] memory amounts) internal view returns (bytes32[] memory leaves, uint256 total) {
        leaves = new bytes32[](amounts.length);
        for (uint256 i; i < amounts.length; ++i) {
            leaves[i] = rewards.rewardLeaf(_recipient(i), amounts[i]);
            total += amounts[i];
        }
    }

    function _boundedAmounts(uint256[] memory raw) internal pure returns (uint256[] memory amounts) {
        uint256 n = raw.length > 12 ? 12 : raw.length;
        amounts = new uint256[](n < 1 ? 1 : n);
        for (uint256 i; i < amounts.length; ++i) {
            amounts[i] = raw.length > i ? bound(raw[i], 1, 1e24) : 7;
        }
    }

    function _post(uint256 epochId, uint256[] memory amounts) internal returns (bytes32[] memory leaves) {
        uint256 total;
        (leaves, total) = _leaves(amounts);
        vm.prank(SETTLER);
        rewards.postEpoch(epochId, TestMerkle.root(leaves), total, DEADLINE);
    }

    function test_rewardLeafIsStandardMerkleTreeEncoding() public view {
        address account = address(0xA11CE);
        bytes32 expected = keccak256(bytes.concat(keccak256(abi.encode(account, uint256(5)))));
        assertEq(rewards.rewardLeaf(account, 5), expected, "leaf encoding");
    }

    /// Every account claims exactly once, sums are conserved, a second claim reverts.
    function testFuzz_claimAllOnceConservesSum(uint256[] memory raw, uint256 order) public {
        uint256[] memory amounts = _boundedAmounts(raw);
        bytes32[] memory leaves = _post(1, amounts);
        uint256 held = token.balanceOf(address(rewards));
        for (uint256 k; k < amounts.length; ++k) {
            uint256 i = (k + order % amounts.length) % amounts.length;
            rewards.claimFor(1, _recipient(i), amounts[i], TestMerkle.proof(leaves, i));
            held -= amounts[i];
            assertEq(token.balanceOf(_recipient(i)), amounts[i], "paid amount");
            assertEq(token.balanceOf(address(rewards)), held, "contract holds unclaimed only");
            assertEq(rewards.getEpoch(1).remaining, held, "remaining tracks balance");
            bytes32[] memory proof = TestMerkle.proof(leaves, i);
            vm.expectRevert(abi.encodeWithSelector(AttributionRewards.AlreadyClaimed.selector, 1, _recipient(i)));
            rewards.claimFor(1, _recipient(i), amounts[i], proof);
        }
        assertEq(held, 0, "everything claimed");
    }

    function testFuzz_wrongAmountIsInvalidProof(uint256[] memory raw, uint256 delta) public {
        uint256[] memory amounts = _boundedAmounts(raw);
        bytes32[] memory leaves = _post(1, amounts);
        uint256 wrong = amounts[0] + bound(delta, 1, 1e18);
        bytes32[] memory proof = TestMerkle.proof(leaves, 0);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.InvalidProof.selector, 1, _recipient(0), wrong));
        rewards.claimFor(1, _recipient(0), wrong, proof);
        assertTrue(!rewards.isClaimed(1, _recipient(0)), "no state change");
    }

    function testFuzz_onlySettlerPosts(address caller) public {
        vm.assume(caller != SETTLER);
        bytes32 role = rewards.SETTLER_ROLE();
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, caller, role));
        vm.prank(caller);
        rewards.postEpoch(1, bytes32(uint256(1)), 1, DEADLINE);
    }

    /// Attack: a settler (or anyone) sweeping an epoch before its claim window closes.
    function testFuzz_earlySweepReverts(address caller, uint256 at) public {
        uint256[] memory amounts = new uint256[](2);
        (amounts[0], amounts[1]) = (5, 6);
        _post(1, amounts);
        vm.warp(bound(at, 1000, DEADLINE));
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.EpochStillOpen.selector, 1, DEADLINE));
        vm.prank(caller);
        rewards.sweep(1);
        assertEq(token.balanceOf(address(rewards)), 11, "nothing moved");
    }

    /// Attack: a settler posting an epoch whose claim window is too short to claim in.
    function testFuzz_claimWindowBelowMinimumReverts(uint64 window) public {
        window = uint64(bound(window, 1, 1 hours - 1));
        uint64 deadline = uint64(block.timestamp) + window;
        vm.expectRevert(
            abi.encodeWithSelector(AttributionRewards.ClaimWindowTooShort.selector, deadline, block.timestamp + 1 hours)
        );
        vm.prank(SETTLER);
        rewards.postEpoch(1, bytes32(uint256(1)), 1, deadline);
        vm.prank(SETTLER);
        rewards.postEpoch(1, bytes32(uint256(1)), 1, uint64(block.timestamp) + 1 hours);
    }

    function test_onlyAdminSetsTreasuryAndWindowWithinBounds() public {
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.ClaimWindowOutOfRange.selector, uint64(59 minutes)));
        rewards.setMinClaimWindow(59 minutes);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.ClaimWindowOutOfRange.selector, uint64(366 days)));
        rewards.setMinClaimWindow(366 days);
        rewards.setMinClaimWindow(7 days);
        assertEq(rewards.minClaimWindow(), 7 days, "window set");
        vm.expectRevert(AttributionRewards.ZeroAddress.selector);
        rewards.setTreasury(address(0));
        bytes32 admin = rewards.DEFAULT_ADMIN_ROLE();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, SETTLER, admin)
        );
        vm.prank(SETTLER);
        rewards.setTreasury(SETTLER);
        assertEq(rewards.treasury(), SINK, "treasury unchanged");
    }

    /// Attack: a token that calls back into the contract while it pays a claim tries to
    /// claim the same leaf again; the guard stops it and the account is paid once.
    function test_reenteringTokenCannotClaimTwice() public {
        ReenteringToken hostile = new ReenteringToken(SETTLER, 1e24);
        AttributionRewards pool = new AttributionRewards(hostile, address(this), address(0), SINK, 1 hours);
        pool.grantRole(pool.SETTLER_ROLE(), SETTLER);
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = pool.rewardLeaf(_recipient(0), 40);
        leaves[1] = pool.rewardLeaf(_recipient(1), 60);
        vm.startPrank(SETTLER);
        hostile.approve(address(pool), 100);
        pool.postEpoch(1, TestMerkle.root(leaves), 100, DEADLINE);
        vm.stopPrank();
        bytes32[] memory proof = TestMerkle.proof(leaves, 0);
        hostile.arm(address(pool), abi.encodeCall(pool.claimFor, (1, _recipient(0), 40, proof)));
        pool.claimFor(1, _recipient(0), 40, proof);
        assertTrue(hostile.attempted() && !hostile.reentered(), "re-entry refused");
        bytes memory guard = abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        assertEq(hostile.reentryRevertData(), guard, "stopped by the guard");
        assertEq(hostile.balanceOf(_recipient(0)), 40, "paid once");
        assertEq(hostile.balanceOf(address(pool)), 60, "the rest stays for the other account");
    }

    /// Attack: a token that re-enters `sweep` of another expired epoch while one is swept.
    function test_reenteringTokenCannotSweepDuringSweep() public {
        ReenteringToken hostile = new ReenteringToken(SETTLER, 1e24);
        AttributionRewards pool = new AttributionRewards(hostile, address(this), address(0), SINK, 1 hours);
        pool.grantRole(pool.SETTLER_ROLE(), SETTLER);
        vm.startPrank(SETTLER);
        hostile.approve(address(pool), 30);
        pool.postEpoch(1, bytes32(uint256(1)), 10, DEADLINE);
        pool.postEpoch(2, bytes32(uint256(2)), 20, DEADLINE);
        vm.stopPrank();
        vm.warp(uint256(DEADLINE) + 1);
        hostile.arm(address(pool), abi.encodeCall(pool.sweep, (2)));
        assertEq(pool.sweep(1), 10, "first sweep");
        assertTrue(hostile.attempted() && !hostile.reentered(), "re-entry refused");
        assertEq(pool.getEpoch(2).remaining, 20, "second epoch untouched");
        assertEq(hostile.balanceOf(address(pool)), 20, "balance = open remaining");
    }

    /// A fee-on-transfer token delivers less than the epoch total: posting is refused.
    function test_feeOnTransferTokenIsRefused() public {
        FeeOnTransferToken fee = new FeeOnTransferToken(SETTLER, 1e24);
        AttributionRewards pool = new AttributionRewards(fee, address(this), address(0), SINK, 1 hours);
        pool.grantRole(pool.SETTLER_ROLE(), SETTLER);
        vm.startPrank(SETTLER);
        fee.approve(address(pool), 1000);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.FundingShortfall.selector, 1, 1000, 990));
        pool.postEpoch(1, bytes32(uint256(1)), 1000, DEADLINE);
        vm.stopPrank();
        assertEq(fee.balanceOf(address(pool)), 0, "nothing held");
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, 1));
        pool.getEpoch(1);
    }

    function test_claimByOwnerPaysCaller() public {
        uint256[] memory amounts = new uint256[](3);
        (amounts[0], amounts[1], amounts[2]) = (10, 20, 30);
        bytes32[] memory leaves = _post(7, amounts);
        vm.prank(_recipient(1));
        rewards.claim(7, 20, TestMerkle.proof(leaves, 1));
        assertEq(token.balanceOf(_recipient(1)), 20, "claimed");
        assertTrue(rewards.isClaimed(7, _recipient(1)), "marked");
    }

    function test_underfundedEpochReverts() public {
        address poor = address(0xB00);
        rewards.grantRole(rewards.SETTLER_ROLE(), poor);
        vm.prank(SETTLER);
        token.transfer(poor, 5);
        vm.prank(poor);
        token.approve(address(rewards), 100);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.InsufficientFunding.selector, 3, 100, 5));
        vm.prank(poor);
        rewards.postEpoch(3, bytes32(uint256(1)), 100, DEADLINE);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, 3));
        rewards.getEpoch(3);
    }

    function test_epochInputsAreChecked() public {
        vm.startPrank(SETTLER);
        vm.expectRevert(AttributionRewards.ZeroRoot.selector);
        rewards.postEpoch(1, bytes32(0), 1, DEADLINE);
        vm.expectRevert(AttributionRewards.ZeroTotal.selector);
        rewards.postEpoch(1, bytes32(uint256(1)), 0, DEADLINE);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.DeadlineNotInFuture.selector, uint64(1000), 1000));
        rewards.postEpoch(1, bytes32(uint256(1)), 1, 1000);
        rewards.postEpoch(1, bytes32(uint256(1)), 1, DEADLINE);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.EpochAlreadyPosted.selector, 1));
        rewards.postEpoch(1, bytes32(uint256(1)), 1, DEADLINE);
        vm.stopPrank();
    }

    function test_unknownEpochReverts() public {
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, 42));
        rewards.claimFor(42, _recipient(0), 1, new bytes32[](0));
    }

    function testFuzz_sweepAfterDeadlineReturnsUnclaimed(uint256[] memory raw, uint256 claims) public {
        uint256[] memory amounts = _boundedAmounts(raw);
        bytes32[] memory leaves = _post(1, amounts);
        (, uint256 total) = _leaves(amounts);
        claims = bound(claims, 0, amounts.length);
        uint256 paid;
        for (uint256 i; i < claims; ++i) {
            rewards.claimFor(1, _recipient(i), amounts[i], TestMerkle.proof(leaves, i));
            paid += amounts[i];
        }
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.EpochStillOpen.selector, 1, DEADLINE));
        rewards.sweep(1);
        vm.warp(uint256(DEADLINE) + 1);
        if (claims < amounts.length) {
            bytes32[] memory proof = TestMerkle.proof(leaves, claims);
            vm.expectRevert(abi.encodeWithSelector(AttributionRewards.ClaimWindowClosed.selector, 1, DEADLINE));
            rewards.claimFor(1, _recipient(claims), amounts[claims], proof);
        }
        uint256 swept = rewards.sweep(1);
        assertEq(swept, total - paid, "swept the unclaimed rest");
        assertEq(token.balanceOf(SINK), total - paid, "treasury paid");
        assertEq(token.balanceOf(address(rewards)), 0, "nothing left");
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.AlreadySwept.selector, 1));
        rewards.sweep(1);
    }

    function test_overfullTreeCannotDrainOtherEpochs() public {
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = rewards.rewardLeaf(_recipient(0), 60);
        leaves[1] = rewards.rewardLeaf(_recipient(1), 60);
        vm.startPrank(SETTLER);
        rewards.postEpoch(1, TestMerkle.root(leaves), 100, DEADLINE);
        rewards.postEpoch(2, bytes32(uint256(9)), 500, DEADLINE);
        vm.stopPrank();
        rewards.claimFor(1, _recipient(0), 60, TestMerkle.proof(leaves, 0));
        bytes32[] memory proof = TestMerkle.proof(leaves, 1);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.ClaimExceedsRemaining.selector, 1, 60, 40));
        rewards.claimFor(1, _recipient(1), 60, proof);
        assertEq(token.balanceOf(address(rewards)), 540, "epoch 2 untouched");
    }

    /// Claimed flags of neighbouring epoch ids (same bitmap word and across words) stay apart.
    function testFuzz_claimedFlagsAreIndependentPerEpoch(uint256 first, uint8 gap) public {
        first = bound(first, 0, type(uint256).max - 300);
        uint256 second = first + 1 + uint256(gap);
        uint256[] memory amounts = new uint256[](2);
        (amounts[0], amounts[1]) = (3, 4);
        bytes32[] memory leaves = _post(first, amounts);
        _post(second, amounts);
        rewards.claimFor(first, _recipient(0), 3, TestMerkle.proof(leaves, 0));
        assertTrue(rewards.isClaimed(first, _recipient(0)), "first claimed");
        assertTrue(!rewards.isClaimed(second, _recipient(0)), "second untouched");
        assertTrue(!rewards.isClaimed(first, _recipient(1)), "other account untouched");
        rewards.claimFor(second, _recipient(0), 3, TestMerkle.proof(leaves, 0));
        assertTrue(rewards.isClaimed(second, _recipient(0)), "second claimed");
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {DataBonds} from "../src/DataBonds.sol";
import {DatanetRegistry} from "../src/DatanetRegistry.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {TestBase} from "./utils/TestBase.sol";
import {FeeOnTransferToken} from "./utils/TokenMocks.sol";

contract DataBondsTest is TestBase {
    OpenToken internal token;
    DatanetRegistry internal registry;
    DataBonds internal bonds;
    bytes32 internal id;
    address internal constant OWNER = address(0x0A1E);
    address internal constant CURATOR = address(0xC0A);
    address internal constant CONTRIBUTOR = address(0xC0B);
    address internal constant TREASURY = address(0x7ea5);
    bytes32 internal constant RECORD = keccak256("record");
    bytes32 internal constant REVIEW = keccak256("review");

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 1e30, 1e31);
        registry = new DatanetRegistry();
        bonds = new DataBonds(token, registry, address(this), TREASURY, 5000);
        vm.startPrank(OWNER);
        id = registry.registerDatanet("medqa", bytes32(0), bytes32(0), "");
        registry.setCurator(id, CURATOR, true);
        bonds.setPolicy(id, 100e18, 2000, 3 days); // bond 100 OPEN, 20% per flag
        vm.stopPrank();
        token.transfer(CONTRIBUTOR, 1e24);
        vm.prank(CONTRIBUTOR);
        token.approve(address(bonds), type(uint256).max);
    }

    function _bond(uint256 amount) internal {
        vm.prank(CONTRIBUTOR);
        bonds.bond(id, amount);
    }

    function _flag(address validator, bytes32 record) internal returns (uint256) {
        vm.prank(validator);
        return bonds.flag(id, record, CONTRIBUTOR, DataBonds.FlagKind.Duplicate, REVIEW);
    }

    function test_onlyTheDatanetOwnerSetsAPolicyWithinTheBounds() public {
        vm.expectRevert(abi.encodeWithSelector(DataBonds.NotDatanetOwner.selector, id, CURATOR));
        vm.prank(CURATOR);
        bonds.setPolicy(id, 1, 1, 1 hours);
        vm.startPrank(OWNER);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.SlashRateTooHigh.selector, 5001, 5000));
        bonds.setPolicy(id, 1, 5001, 1 hours);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.UnbondingDelayOutOfRange.selector, uint64(59 minutes)));
        bonds.setPolicy(id, 1, 1, 59 minutes);
        vm.expectRevert(DataBonds.ZeroAmount.selector);
        bonds.setPolicy(id, 0, 1, 1 hours);
        vm.stopPrank();
        assertEq(bonds.policy(id).slashBps, 2000, "unchanged");
    }

    function test_bondingNeedsAPolicyAndMakesTheContributorBonded() public {
        bytes32 other = keccak256("no policy");
        vm.expectRevert(abi.encodeWithSelector(DataBonds.NoPolicy.selector, other));
        vm.prank(CONTRIBUTOR);
        bonds.bond(other, 1e18);
        assertTrue(!bonds.isBonded(id, CONTRIBUTOR), "not bonded yet");
        _bond(100e18);
        assertTrue(bonds.isBonded(id, CONTRIBUTOR), "bonded");
        assertEq(token.balanceOf(address(bonds)), 100e18, "held");
    }

    function test_aFlagSlashesTheBondToTheTreasuryAndRecordsTheReview() public {
        _bond(100e18);
        assertEq(_flag(CURATOR, RECORD), 20e18, "20% of the bond");
        assertEq(token.balanceOf(TREASURY), 20e18, "to the treasury");
        assertEq(bonds.bondOf(id, CONTRIBUTOR).bonded, 80e18, "bond left");
        assertTrue(!bonds.isBonded(id, CONTRIBUTOR), "below the required bond");
        DataBonds.Flag memory flag = bonds.getFlag(id, RECORD);
        assertEq(flag.reviewHash, REVIEW, "the off-chain review's hash");
        assertEq(flag.validator, CURATOR, "who flagged");
        assertEq(flag.contributor, CONTRIBUTOR, "whose record");
        assertEq(uint256(flag.penalty), 20e18, "penalty");
        assertEq(bonds.totalBonded(), 80e18, "total bonded");
    }

    function test_aRecordIsFlaggedOnce() public {
        _bond(100e18);
        _flag(OWNER, RECORD);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.AlreadyFlagged.selector, id, RECORD));
        _flag(CURATOR, RECORD);
        assertEq(_flag(CURATOR, keccak256("another")), 16e18, "20% of what is left");
    }

    function testFuzz_onlyValidatorsFlag(address caller) public {
        vm.assume(caller != OWNER && caller != CURATOR);
        _bond(100e18);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.NotValidator.selector, id, caller));
        _flag(caller, RECORD);
        assertEq(bonds.bondOf(id, CONTRIBUTOR).bonded, 100e18, "untouched");
    }

    function test_curatorsOfAPreviousOwnerCannotFlag() public {
        _bond(100e18);
        vm.prank(OWNER);
        registry.transferDatanetOwnership(id, address(0xB0B));
        vm.prank(address(0xB0B));
        registry.acceptDatanetOwnership(id);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.NotValidator.selector, id, CURATOR));
        _flag(CURATOR, RECORD);
    }

    function test_flagNeedsAKindAndAReviewHash() public {
        vm.startPrank(CURATOR);
        vm.expectRevert(DataBonds.InvalidFlagKind.selector);
        bonds.flag(id, RECORD, CONTRIBUTOR, DataBonds.FlagKind.None, REVIEW);
        vm.expectRevert(DataBonds.ZeroReviewHash.selector);
        bonds.flag(id, RECORD, CONTRIBUTOR, DataBonds.FlagKind.Malicious, bytes32(0));
        vm.stopPrank();
    }

    function test_unbondingWaitsForTheDelayAndStaysSlashable() public {
        _bond(100e18);
        vm.prank(CONTRIBUTOR);
        bonds.beginUnbonding(id, 100e18);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.StillUnbonding.selector, uint64(1000 + 3 days)));
        vm.prank(CONTRIBUTOR);
        bonds.withdraw(id);
        assertEq(_flag(CURATOR, RECORD), 20e18, "unbonding tokens are slashed too");
        vm.warp(1000 + 3 days);
        uint256 before = token.balanceOf(CONTRIBUTOR);
        vm.prank(CONTRIBUTOR);
        assertEq(bonds.withdraw(id), 80e18, "the rest comes back");
        assertEq(token.balanceOf(CONTRIBUTOR), before + 80e18, "paid");
        assertEq(bonds.totalBonded(), 0, "nothing held");
        assertEq(token.balanceOf(address(bonds)), 0, "balance = total bonded");
    }

    function testFuzz_penaltyIsTheRateOfTheBond(uint256 amount, uint16 rate) public {
        amount = bound(amount, 1, 1e24);
        rate = uint16(bound(rate, 0, 5000));
        vm.prank(OWNER);
        bonds.setPolicy(id, 1, rate, 1 hours);
        _bond(amount);
        uint256 penalty = _flag(CURATOR, RECORD);
        assertEq(penalty, amount * rate / 10_000, "penalty = bond x rate");
        assertEq(token.balanceOf(address(bonds)), amount - penalty, "balance = bond - penalty");
        assertEq(token.balanceOf(TREASURY), penalty, "treasury got the penalty");
    }

    function test_feeOnTransferTokenIsRefused() public {
        FeeOnTransferToken fee = new FeeOnTransferToken(CONTRIBUTOR, 1e24);
        DataBonds other = new DataBonds(fee, registry, address(this), TREASURY, 5000);
        vm.prank(OWNER);
        other.setPolicy(id, 1, 100, 1 hours);
        vm.startPrank(CONTRIBUTOR);
        fee.approve(address(other), 1000);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.FundingShortfall.selector, 1000, 990));
        other.bond(id, 1000);
        vm.stopPrank();
    }

    function test_onlyTheAdminBoundsTheRate() public {
        vm.expectRevert(abi.encodeWithSelector(DataBonds.SlashRateTooHigh.selector, 10_001, 10_000));
        bonds.setMaxSlashBps(10_001);
        bonds.setMaxSlashBps(1000);
        vm.expectRevert(abi.encodeWithSelector(DataBonds.SlashRateTooHigh.selector, 2000, 1000));
        vm.prank(OWNER);
        bonds.setPolicy(id, 100e18, 2000, 3 days);
        vm.expectRevert();
        vm.prank(OWNER);
        bonds.setMaxSlashBps(5000);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {AgentRegistry} from "../src/AgentRegistry.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {AgentReports} from "./utils/AgentReports.sol";
import {TestBase} from "./utils/TestBase.sol";
import {FeeOnTransferToken} from "./utils/TokenMocks.sol";

contract AgentRegistryTest is TestBase {
    OpenToken internal token;
    AgentRegistry internal registry;
    address internal constant AGENT = address(0xA6E7);
    address internal constant TREASURY = address(0x7ea5);
    address internal constant GOVERNANCE = address(0x60f);
    uint256 internal constant REPORTER_KEY = 0xB0B;
    address internal reporter;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 1e30, 1e31);
        registry = new AgentRegistry(token, address(this), address(0), TREASURY, _params());
        registry.grantRole(registry.SLASHER_ROLE(), GOVERNANCE);
        reporter = vm.addr(REPORTER_KEY);
        token.transfer(AGENT, 1e24);
        token.transfer(reporter, 1e24);
        vm.prank(AGENT);
        token.approve(address(registry), type(uint256).max);
        vm.prank(reporter);
        token.approve(address(registry), type(uint256).max);
    }

    function _params() internal pure returns (AgentRegistry.Params memory) {
        // min stake 100, bond 10, unbonding 7 days, challenge 2 days, slash 50%, reporter 20%.
        return AgentRegistry.Params(100e18, 10e18, 7 days, 2 days, 5000, 2000);
    }

    function _register(uint256 amount) internal {
        bytes32[] memory models = new bytes32[](1);
        models[0] = keccak256("model");
        vm.prank(AGENT);
        registry.register(amount, models);
    }

    function _report(bytes32 requestHash) internal returns (uint256) {
        AgentRegistry.FailedServiceReport memory r = AgentReports.failure(AGENT, requestHash);
        bytes memory sig = AgentReports.sign(registry, REPORTER_KEY, r);
        return registry.report(r, reporter, sig);
    }

    function test_registerNeedsTheMinimumStake() public {
        bytes32[] memory models = new bytes32[](0);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.StakeBelowMinimum.selector, 99e18, 100e18));
        vm.prank(AGENT);
        registry.register(99e18, models);
        _register(100e18);
        assertTrue(registry.isActive(AGENT), "active");
        assertEq(registry.getAgent(AGENT).modelIds[0], keccak256("model"), "declared model");
        assertEq(token.balanceOf(address(registry)), 100e18, "stake held");
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.AlreadyRegistered.selector, AGENT));
        vm.prank(AGENT);
        registry.register(100e18, models);
    }

    function test_withdrawOnlyAfterUnbonding() public {
        _register(150e18);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.StakeBelowMinimum.selector, 60e18, 100e18));
        vm.prank(AGENT);
        registry.beginUnbonding(90e18);
        vm.prank(AGENT);
        registry.beginUnbonding(150e18);
        assertTrue(!registry.isActive(AGENT), "inactive while unbonding");
        uint64 ends = uint64(1000 + 7 days);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.StillUnbonding.selector, ends));
        vm.prank(AGENT);
        registry.withdraw();
        vm.warp(ends);
        vm.prank(AGENT);
        assertEq(registry.withdraw(), 150e18, "withdrawn");
        assertEq(registry.totalBonded(), 0, "nothing bonded");
        assertEq(token.balanceOf(AGENT), 1e24, "stake back");
    }

    /// An unchallenged report is slashed after the window: reporter and treasury are paid.
    function test_unchallengedReportIsSlashedAfterTheWindow() public {
        _register(200e18);
        uint256 id = _report(keccak256("request 1"));
        assertEq(token.balanceOf(address(registry)), 210e18, "bond held");
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.ChallengeWindowOpen.selector, id, uint64(1000 + 2 days)));
        registry.executeSlash(id);
        vm.warp(1000 + 2 days + 1);
        assertEq(registry.executeSlash(id), 100e18, "half the stake");
        assertEq(token.balanceOf(reporter), 1e24 + 20e18, "bond back + 20% of the slash");
        assertEq(token.balanceOf(TREASURY), 80e18, "treasury gets the rest");
        assertEq(registry.getAgent(AGENT).stake, 100e18, "stake left");
        assertTrue(registry.getDispute(id).status == AgentRegistry.DisputeStatus.Upheld, "upheld");
    }

    /// The agent challenges; governance upholds (slash) or rejects (bond to the agent).
    function test_challengedReportIsDecidedByTheSlasher() public {
        _register(200e18);
        uint256 upheld = _report(keccak256("request 1"));
        uint256 rejected = _report(keccak256("request 2"));
        vm.startPrank(AGENT);
        registry.challenge(upheld, keccak256("agent logs 1"));
        registry.challenge(rejected, keccak256("agent logs 2"));
        vm.stopPrank();
        vm.warp(1000 + 3 days);
        vm.expectRevert(
            abi.encodeWithSelector(
                AgentRegistry.DisputeNotOpen.selector, upheld, AgentRegistry.DisputeStatus.Challenged
            )
        );
        registry.executeSlash(upheld);
        bytes32 role = registry.SLASHER_ROLE();
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, AGENT, role));
        vm.prank(AGENT);
        registry.resolve(rejected, false);
        vm.startPrank(GOVERNANCE);
        registry.resolve(upheld, true);
        registry.resolve(rejected, false);
        vm.stopPrank();
        assertEq(registry.getAgent(AGENT).stake, 100e18, "slashed once");
        assertEq(token.balanceOf(AGENT), 1e24 - 200e18 + 10e18, "rejected bond to the agent");
        assertEq(token.balanceOf(reporter), 1e24 - 10e18 + 20e18, "one bond lost, one back + share");
        assertEq(registry.getAgent(AGENT).openDisputes, 0, "no dispute open");
    }

    function test_challengeOnlyByTheAgentWithinTheWindow() public {
        _register(200e18);
        uint256 id = _report(keccak256("request 1"));
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.NotDisputedAgent.selector, id, reporter));
        vm.prank(reporter);
        registry.challenge(id, bytes32(0));
        vm.warp(1000 + 2 days + 1);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.ChallengeWindowClosed.selector, id, uint64(1000 + 2 days)));
        vm.prank(AGENT);
        registry.challenge(id, bytes32(0));
    }

    /// Attack: an agent that sees a report coming unbonds and tries to leave with its stake.
    function test_openDisputeBlocksWithdrawalAndUnbondingStakeIsSlashable() public {
        _register(200e18);
        vm.prank(AGENT);
        registry.beginUnbonding(200e18);
        uint256 id = _report(keccak256("request 1"));
        vm.warp(1000 + 7 days);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.DisputesOpen.selector, AGENT, uint32(1)));
        vm.prank(AGENT);
        registry.withdraw();
        registry.executeSlash(id);
        vm.prank(AGENT);
        assertEq(registry.withdraw(), 100e18, "only the unslashed half leaves");
    }

    function test_aReportSignatureIsUsableOnce() public {
        _register(200e18);
        AgentRegistry.FailedServiceReport memory r = AgentReports.failure(AGENT, keccak256("request 1"));
        bytes memory sig = AgentReports.sign(registry, REPORTER_KEY, r);
        registry.report(r, reporter, sig);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.InvalidSignature.selector, reporter));
        registry.report(r, reporter, sig);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.InvalidSignature.selector, AGENT));
        registry.report(r, AGENT, sig);
    }

    function test_governanceSlashesDirectlyToTheTreasury() public {
        _register(200e18);
        vm.prank(GOVERNANCE);
        registry.slash(AGENT, 500e18);
        assertEq(token.balanceOf(TREASURY), 200e18, "capped at what is bonded");
        assertEq(registry.totalBonded(), 0, "nothing left");
        assertTrue(!registry.isActive(AGENT), "inactive");
    }

    function test_feeOnTransferStakeIsRefused() public {
        FeeOnTransferToken fee = new FeeOnTransferToken(AGENT, 1e24);
        AgentRegistry other = new AgentRegistry(fee, address(this), address(0), TREASURY, _params());
        vm.startPrank(AGENT);
        fee.approve(address(other), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(AgentRegistry.FundingShortfall.selector, 100e18, 99e18));
        other.register(100e18, new bytes32[](0));
        vm.stopPrank();
    }

    function test_paramsAreChecked() public {
        AgentRegistry.Params memory p = _params();
        p.slashBps = 10_001;
        vm.expectRevert(AgentRegistry.InvalidParams.selector);
        registry.setParams(p);
        p = _params();
        p.unbondingPeriod = 1 days;
        vm.expectRevert(AgentRegistry.InvalidParams.selector);
        registry.setParams(p);
    }
}

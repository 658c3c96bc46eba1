// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {AgentRegistry} from "../src/AgentRegistry.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {AgentReports} from "./utils/AgentReports.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Drives agents through random stakes, unbondings, withdrawals, reports,
///         challenges, decisions and direct slashes, keeping ghost books of the money.
contract AgentHandler is TestBase {
    uint256 internal constant AGENTS = 3;
    uint256 internal constant REPORTER_KEY = 0xB0B;

    AgentRegistry public immutable registry;
    OpenToken public immutable token;
    uint256 public deposited;
    uint256 public withdrawn;
    uint256 public slashed;
    uint256 internal _requests;

    constructor(AgentRegistry registry_, OpenToken token_) {
        registry = registry_;
        token = token_;
    }

    /// Hand the agents and the reporter tokens and approvals (once; called by setUp).
    function fundAccounts() external {
        if (token.allowance(agent(0), address(registry)) != 0) return;
        for (uint256 i; i < AGENTS; ++i) {
            token.transfer(agent(i), 1e24);
            vm.prank(agent(i));
            token.approve(address(registry), type(uint256).max);
        }
        token.transfer(vm.addr(REPORTER_KEY), 1e24);
        vm.prank(vm.addr(REPORTER_KEY));
        token.approve(address(registry), type(uint256).max);
    }

    function agent(uint256 i) public pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encode("invariant agent", i % AGENTS)))));
    }

    function register(uint256 who, uint256 amount) external {
        amount = bound(amount, 100e18, 500e18);
        vm.prank(agent(who));
        try registry.register(amount, new bytes32[](0)) {
            deposited += amount;
        } catch {}
    }

    function addStake(uint256 who, uint256 amount) external {
        amount = bound(amount, 1, 100e18);
        vm.prank(agent(who));
        try registry.addStake(amount) {
            deposited += amount;
        } catch {}
    }

    function beginUnbonding(uint256 who, uint256 amount) external {
        amount = bound(amount, 1, 600e18);
        vm.prank(agent(who));
        try registry.beginUnbonding(amount) {} catch {}
    }

    function withdraw(uint256 who) external {
        vm.prank(agent(who));
        try registry.withdraw() returns (uint256 amount) {
            withdrawn += amount;
        } catch {}
    }

    function report(uint256 who) external {
        AgentRegistry.FailedServiceReport memory r = AgentReports.failure(agent(who), bytes32(++_requests));
        bytes memory sig = AgentReports.sign(registry, REPORTER_KEY, r);
        try registry.report(r, vm.addr(REPORTER_KEY), sig) {} catch {}
    }

    function challenge(uint256 disputeSeed) external {
        uint256 id = _dispute(disputeSeed);
        if (id == 0) return;
        vm.prank(registry.getDispute(id).agent);
        try registry.challenge(id, bytes32(id)) {} catch {}
    }

    function executeSlash(uint256 disputeSeed) external {
        uint256 id = _dispute(disputeSeed);
        if (id == 0) return;
        try registry.executeSlash(id) returns (uint256 amount) {
            slashed += amount;
        } catch {}
    }

    function resolve(uint256 disputeSeed, bool upheld) external {
        uint256 id = _dispute(disputeSeed);
        if (id == 0) return;
        uint256 before = registry.totalBonded();
        try registry.resolve(id, upheld) {
            slashed += before - registry.totalBonded();
        } catch {}
    }

    function slash(uint256 who, uint256 amount) external {
        uint256 before = registry.totalBonded();
        try registry.slash(agent(who), bound(amount, 1, 300e18)) {
            slashed += before - registry.totalBonded();
        } catch {}
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 4 days));
    }

    /// The sum of `stake + unbonding` over the agents, read from the contract.
    function sumOfStakes() external view returns (uint256 sum) {
        for (uint256 i; i < AGENTS; ++i) {
            try registry.getAgent(agent(i)) returns (AgentRegistry.Agent memory a) {
                sum += a.stake + a.unbonding;
            } catch {}
        }
    }

    function _dispute(uint256 seed) internal view returns (uint256) {
        uint256 count = registry.disputeCount();
        return count == 0 ? 0 : bound(seed, 1, count);
    }
}

contract AgentRegistryInvariantTest is TestBase {
    OpenToken internal token;
    AgentRegistry internal registry;
    AgentHandler internal handler;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 1e28, 1e28);
        AgentRegistry.Params memory params = AgentRegistry.Params(100e18, 10e18, 7 days, 2 days, 5000, 2000);
        registry = new AgentRegistry(token, address(this), address(0), address(0x7ea5), params);
        handler = new AgentHandler(registry, token);
        token.transfer(address(handler), 1e26);
        handler.fundAccounts();
        registry.grantRole(registry.SLASHER_ROLE(), address(handler));
    }

    /// Only the handler is called by the fuzzer.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_totalStakedIsStakesMinusSlashed() public view {
        uint256 expected = handler.deposited() - handler.withdrawn() - handler.slashed();
        assertEq(registry.totalBonded(), expected, "total bonded = deposited - withdrawn - slashed");
        assertEq(registry.totalBonded(), handler.sumOfStakes(), "total bonded = sum of agent stakes");
    }

    function invariant_balanceCoversStakesAndBonds() public view {
        uint256 held = token.balanceOf(address(registry));
        assertEq(held, registry.totalBonded() + registry.totalReportBonds(), "balance = bonded + report bonds");
    }
}

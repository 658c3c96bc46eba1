// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {DataBonds} from "../src/DataBonds.sol";
import {DatanetRegistry} from "../src/DatanetRegistry.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Drives contributors through random bonds, unbondings, withdrawals and flags,
///         keeping ghost books of the money.
contract BondsHandler is TestBase {
    uint256 internal constant CONTRIBUTORS = 3;

    DataBonds public immutable bonds;
    OpenToken public immutable token;
    bytes32 public immutable datanetId;
    uint256 public deposited;
    uint256 public withdrawn;
    uint256 public penalties;
    uint256 internal _records;

    constructor(DataBonds bonds_, OpenToken token_, bytes32 datanetId_) {
        bonds = bonds_;
        token = token_;
        datanetId = datanetId_;
    }

    function fundAccounts() external {
        for (uint256 i; i < CONTRIBUTORS; ++i) {
            token.transfer(contributor(i), 1e24);
            vm.prank(contributor(i));
            token.approve(address(bonds), type(uint256).max);
        }
    }

    function contributor(uint256 i) public pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encode("bonded contributor", i)))));
    }

    function bond(uint256 who, uint256 amount) external {
        amount = bound(amount, 1, 1e21);
        vm.prank(contributor(who % CONTRIBUTORS));
        bonds.bond(datanetId, amount);
        deposited += amount;
    }

    function beginUnbonding(uint256 who, uint256 amount) external {
        address account = contributor(who % CONTRIBUTORS);
        uint256 bonded = bonds.bondOf(datanetId, account).bonded;
        if (bonded == 0) return;
        vm.prank(account);
        bonds.beginUnbonding(datanetId, bound(amount, 1, bonded));
    }

    function withdraw(uint256 who) external {
        address account = contributor(who % CONTRIBUTORS);
        vm.prank(account);
        try bonds.withdraw(datanetId) returns (uint256 amount) {
            withdrawn += amount;
        } catch {}
    }

    function flag(uint256 who, bool malicious) external {
        DataBonds.FlagKind kind = malicious ? DataBonds.FlagKind.Malicious : DataBonds.FlagKind.Duplicate;
        // NOTE: the handler owns the datanet, so it is a validator.
        penalties += bonds.flag(
            datanetId, bytes32(++_records), contributor(who % CONTRIBUTORS), kind, keccak256(abi.encode(_records))
        );
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 2 days));
    }

    function sumOfBonds() external view returns (uint256 sum) {
        for (uint256 i; i < CONTRIBUTORS; ++i) {
            DataBonds.Bond memory found = bonds.bondOf(datanetId, contributor(i));
            sum += uint256(found.bonded) + found.unbonding;
        }
    }
}

contract DataBondsInvariantTest is TestBase {
    OpenToken internal token;
    DataBonds internal bonds;
    BondsHandler internal handler;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 1e28, 1e28);
        DatanetRegistry registry = new DatanetRegistry();
        bonds = new DataBonds(token, registry, address(this), address(0x7ea5), 5000);
        bytes32 id = registry.datanetIdOf(address(this), "medqa");
        handler = new BondsHandler(bonds, token, id);
        registry.registerDatanet("medqa", bytes32(0), bytes32(0), "");
        registry.transferDatanetOwnership(id, address(handler));
        vm.prank(address(handler));
        registry.acceptDatanetOwnership(id);
        vm.prank(address(handler));
        bonds.setPolicy(id, 100e18, 2500, 3 days);
        token.transfer(address(handler), 1e26);
        handler.fundAccounts();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_totalBondedIsDepositsMinusWithdrawalsAndPenalties() public view {
        uint256 expected = handler.deposited() - handler.withdrawn() - handler.penalties();
        assertEq(bonds.totalBonded(), expected, "total bonded = deposited - withdrawn - penalties");
        assertEq(bonds.totalBonded(), handler.sumOfBonds(), "total bonded = sum of bonds");
        assertEq(token.balanceOf(address(bonds)), bonds.totalBonded(), "balance = total bonded");
        assertEq(token.balanceOf(address(0x7ea5)), handler.penalties(), "treasury = penalties");
    }
}

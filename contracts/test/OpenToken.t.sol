// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {ERC20Capped} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Capped.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {TestBase} from "./utils/TestBase.sol";

contract OpenTokenTest is TestBase {
    OpenToken internal token;
    uint256 internal constant CAP = 1_000e18;

    function setUp() public {
        vm.warp(1000);
        token = new OpenToken(address(this), address(this), 100e18, CAP);
    }

    function testFuzz_supplyNeverExceedsCap(uint256 amount) public {
        amount = bound(amount, 0, 2 * CAP);
        uint256 room = CAP - token.totalSupply();
        if (amount > room) {
            vm.expectRevert(abi.encodeWithSelector(ERC20Capped.ERC20ExceededCap.selector, 100e18 + amount, CAP));
        }
        token.mint(address(0xB0B), amount);
        assertTrue(token.totalSupply() <= token.cap(), "within cap");
    }

    function testFuzz_onlyMinterMints(address caller) public {
        vm.assume(caller != address(this) && caller != address(0));
        bytes32 role = token.MINTER_ROLE();
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, caller, role));
        vm.prank(caller);
        token.mint(caller, 1);
        token.grantRole(role, caller);
        vm.prank(caller);
        token.mint(caller, 1);
        assertEq(token.balanceOf(caller), 1, "granted minter mints");
    }

    function test_adminMovesInTwoStepsAfterADelay() public {
        address next = address(0xB0B);
        token.beginDefaultAdminTransfer(next);
        assertEq(token.defaultAdmin(), address(this), "admin until accepted");
        vm.warp(1000 + 1 days + 1);
        vm.prank(next);
        token.acceptDefaultAdminTransfer();
        assertEq(token.defaultAdmin(), next, "new admin");
        bytes32 admin = token.DEFAULT_ADMIN_ROLE();
        bytes32 minter = token.MINTER_ROLE();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, address(this), admin)
        );
        token.grantRole(minter, address(this));
    }
}

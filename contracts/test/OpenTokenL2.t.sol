// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ERC165Checker} from "@openzeppelin/contracts/utils/introspection/ERC165Checker.sol";
import {ILegacyMintableERC20, IOptimismMintableERC20} from "../src/interfaces/IOptimismMintableERC20.sol";
import {OpenToken} from "../src/OpenToken.sol";
import {OpenTokenL2} from "../src/OpenTokenL2.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice The checks `L2StandardBridge` makes before it mints or burns a token, and the
///         calls it then makes (the deposit and withdrawal halves, without the messenger).
contract StandardBridgeChecks {
    function isOptimismMintable(address token) public view returns (bool) {
        return ERC165Checker.supportsInterface(token, type(ILegacyMintableERC20).interfaceId)
            || ERC165Checker.supportsInterface(token, type(IOptimismMintableERC20).interfaceId);
    }

    function isCorrectTokenPair(address mintable, address other) public view returns (bool) {
        if (ERC165Checker.supportsInterface(mintable, type(ILegacyMintableERC20).interfaceId)) {
            return other == ILegacyMintableERC20(mintable).l1Token();
        }
        return other == IOptimismMintableERC20(mintable).remoteToken();
    }

    function finalizeDeposit(address localToken, address remoteToken, address to, uint256 amount) external {
        require(isOptimismMintable(localToken) && isCorrectTokenPair(localToken, remoteToken), "not mintable");
        IOptimismMintableERC20(localToken).mint(to, amount);
    }

    function withdraw(address localToken, uint256 amount) external {
        require(isOptimismMintable(localToken), "not mintable");
        IOptimismMintableERC20(localToken).burn(msg.sender, amount);
    }
}

contract OpenTokenL2Test is TestBase {
    StandardBridgeChecks internal bridge;
    OpenToken internal l1;
    OpenTokenL2 internal l2;
    address internal constant ALICE = address(0xA11CE);

    function setUp() public {
        bridge = new StandardBridgeChecks();
        l1 = new OpenToken(address(this), address(this), 1e24, 1e28);
        l2 = new OpenTokenL2(address(bridge), address(l1));
    }

    function test_theBridgeRecognisesTheTokenByErc165() public view {
        assertTrue(type(IOptimismMintableERC20).interfaceId == bytes4(0xec4fc8e3), "the bridge's interface id");
        assertTrue(type(ILegacyMintableERC20).interfaceId == bytes4(0x1d1d8b63), "the legacy interface id");
        assertTrue(l2.supportsInterface(0x01ffc9a7), "IERC165");
        assertTrue(l2.supportsInterface(0xec4fc8e3), "IOptimismMintableERC20");
        assertTrue(l2.supportsInterface(0x1d1d8b63), "ILegacyMintableERC20");
        assertTrue(!l2.supportsInterface(0xffffffff), "not the invalid id");
        assertTrue(bridge.isOptimismMintable(address(l2)), "mintable by the bridge");
        assertTrue(!bridge.isOptimismMintable(address(l1)), "the L1 token is not");
        assertTrue(bridge.isCorrectTokenPair(address(l2), address(l1)), "paired with the L1 token");
        assertEq(l2.bridge(), address(bridge), "bridge");
        assertEq(l2.l2Bridge(), address(bridge), "legacy bridge");
        assertEq(l2.l1Token(), address(l1), "legacy remote");
    }

    function test_aDepositMintsAndAWithdrawalBurns() public {
        bridge.finalizeDeposit(address(l2), address(l1), ALICE, 5e18);
        assertEq(l2.balanceOf(ALICE), 5e18, "minted on deposit");
        vm.prank(ALICE);
        bridge.withdraw(address(l2), 2e18);
        assertEq(l2.balanceOf(ALICE), 3e18, "burned on withdrawal");
        assertEq(l2.totalSupply(), 3e18, "supply follows the bridge");
    }

    function testFuzz_onlyTheBridgeMintsOrBurns(address caller, uint256 amount) public {
        vm.assume(caller != address(bridge));
        amount = bound(amount, 1, 1e30);
        vm.expectRevert(abi.encodeWithSelector(OpenTokenL2.NotBridge.selector, caller));
        vm.prank(caller);
        l2.mint(caller, amount);
        bridge.finalizeDeposit(address(l2), address(l1), ALICE, amount);
        vm.expectRevert(abi.encodeWithSelector(OpenTokenL2.NotBridge.selector, caller));
        vm.prank(caller);
        l2.burn(ALICE, amount);
        assertEq(l2.balanceOf(ALICE), amount, "untouched");
    }

    function test_aWrongPairIsRefused() public {
        OpenTokenL2 other = new OpenTokenL2(address(bridge), address(0xBAD));
        assertTrue(!bridge.isCorrectTokenPair(address(other), address(l1)), "another L1 token");
        vm.expectRevert();
        bridge.finalizeDeposit(address(other), address(l1), ALICE, 1);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TestBase} from "./utils/TestBase.sol";

contract ModelRegistryTest is TestBase {
    ModelRegistry internal registry;

    function setUp() public {
        registry = new ModelRegistry();
    }

    function _manifest(bytes32 weights, bytes32[] memory roots) internal pure returns (ModelRegistry.Manifest memory) {
        return ModelRegistry.Manifest(weights, "smollm2-135m-instruct", keccak256("recipe"), roots, keccak256("log"));
    }

    function testFuzz_idBindsRegistrantToManifestHash(bytes32 weights, bytes32[] memory roots) public {
        vm.assume(weights != bytes32(0));
        ModelRegistry.Manifest memory m = _manifest(weights, roots);
        bytes32 manifestHash = keccak256(
            abi.encode(
                keccak256("openledger.ModelManifest.v1"), weights, m.baseModel, m.recipeHash, roots, m.trainingLogRoot
            )
        );
        bytes32 expected = keccak256(abi.encode(address(this), manifestHash));
        assertEq(registry.manifestHashOf(m), manifestHash, "pure manifest hash");
        assertEq(registry.modelIdOf(address(this), m), expected, "pure id");
        bytes32 id = registry.registerModel(m, 5);
        assertEq(id, expected, "registered id");
        ModelRegistry.Model memory model = registry.getModel(id);
        assertEq(model.owner, address(this), "owner");
        assertEq(model.registrant, address(this), "registrant");
        assertEq(model.manifest.datanetRoots.length, roots.length, "roots stored");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.ModelAlreadyRegistered.selector, id));
        registry.registerModel(m, 5);
    }

    function testFuzz_onlyOwnerChangesModel(address caller) public {
        vm.assume(caller != address(this));
        bytes32 id = registry.registerModel(_manifest(keccak256("w"), new bytes32[](1)), 5);
        vm.startPrank(caller);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotModelOwner.selector, id, caller));
        registry.setPrice(id, 1);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotModelOwner.selector, id, caller));
        registry.setStatus(id, ModelRegistry.Status.Deprecated);
        vm.stopPrank();
        assertEq(registry.getModel(id).pricePer1kTokens, 5, "price unchanged");
    }

    /// Attack: a front-runner copies a pending registration (same manifest) into an earlier
    /// transaction. It gets its own id; the author's id stays free and is the author's.
    function testFuzz_frontRunRegistrationCannotTakeTheId(address attacker) public {
        vm.assume(attacker != address(this) && attacker != address(0));
        ModelRegistry.Manifest memory m = _manifest(keccak256("w"), new bytes32[](1));
        bytes32 authorId = registry.modelIdOf(address(this), m);
        vm.prank(attacker);
        bytes32 squatted = registry.registerModel(m, 0);
        assertTrue(squatted != authorId, "different id");
        assertTrue(!registry.isRegistered(authorId), "author id still free");
        assertEq(registry.registerModel(m, 5), authorId, "author registers its id");
        assertEq(registry.getModel(authorId).owner, address(this), "author owns it");
        assertEq(registry.getModel(squatted).registrant, attacker, "the copy names its registrant");
    }

    function test_ownershipMovesInTwoSteps() public {
        bytes32 id = registry.registerModel(_manifest(keccak256("w"), new bytes32[](0)), 5);
        address next = address(0xB0B);
        registry.transferModelOwnership(id, next);
        assertEq(registry.getModel(id).owner, address(this), "owner until accepted");
        assertEq(registry.pendingOwner(id), next, "pending");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotPendingOwner.selector, id, address(0xBAD)));
        vm.prank(address(0xBAD));
        registry.acceptModelOwnership(id);
        vm.prank(next);
        registry.acceptModelOwnership(id);
        ModelRegistry.Model memory model = registry.getModel(id);
        assertEq(model.owner, next, "new owner");
        assertEq(model.registrant, address(this), "registrant kept");
        assertEq(registry.pendingOwner(id), address(0), "offer used");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotModelOwner.selector, id, address(this)));
        registry.setPrice(id, 1);
    }

    function test_statusAndPrice() public {
        bytes32 id = registry.registerModel(_manifest(keccak256("w"), new bytes32[](0)), 5);
        registry.setStatus(id, ModelRegistry.Status.Deprecated);
        registry.setPrice(id, 9);
        ModelRegistry.Model memory model = registry.getModel(id);
        assertTrue(model.status == ModelRegistry.Status.Deprecated, "deprecated");
        assertEq(model.pricePer1kTokens, 9, "price");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.InvalidStatus.selector, ModelRegistry.Status.None));
        registry.setStatus(id, ModelRegistry.Status.None);
    }

    function test_badManifestsRevert() public {
        vm.expectRevert(ModelRegistry.ZeroWeightsHash.selector);
        registry.registerModel(_manifest(bytes32(0), new bytes32[](0)), 0);
        ModelRegistry.Manifest memory m = _manifest(keccak256("w"), new bytes32[](0));
        m.baseModel = "";
        vm.expectRevert(ModelRegistry.EmptyBaseModel.selector);
        registry.registerModel(m, 0);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownModel.selector, bytes32(uint256(1))));
        registry.getModel(bytes32(uint256(1)));
    }
}

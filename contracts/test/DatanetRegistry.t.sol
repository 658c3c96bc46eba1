// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {DatanetRegistry} from "../src/DatanetRegistry.sol";
import {TestBase, TestMerkle} from "./utils/TestBase.sol";

contract DatanetRegistryTest is TestBase {
    DatanetRegistry internal registry;
    uint256 internal constant OWNER_KEY = 0xA11CE;
    address internal owner;
    bytes32 internal id;

    function setUp() public {
        registry = new DatanetRegistry();
        owner = vm.addr(OWNER_KEY);
        vm.prank(owner);
        id = registry.registerDatanet("medqa", keccak256("schema"), keccak256("meta"), "ipfs://meta");
    }

    function _contributor(uint256 i) internal pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encode("contributor", i)))));
    }

    function _signPublish(uint256 key, bytes32 root, uint48 count, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        bytes32 structHash = keccak256(
            abi.encode(registry.PUBLISH_SNAPSHOT_TYPEHASH(), id, root, count, registry.nonces(vm.addr(key)), deadline)
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", registry.domainSeparator(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function test_idIsOwnerNamespaced() public view {
        assertEq(id, keccak256(abi.encode(owner, keccak256("medqa"))), "id derivation");
        assertEq(registry.getDatanet(id).owner, owner, "owner stored");
    }

    function test_duplicateRegistrationReverts() public {
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.DatanetAlreadyRegistered.selector, id));
        vm.prank(owner);
        registry.registerDatanet("medqa", bytes32(0), bytes32(0), "");
    }

    /// Every published record is proven; a record with another contributor is not.
    function testFuzz_containsEveryRecord(bytes32[] memory raw) public {
        uint256 n = raw.length == 0 ? 1 : (raw.length > 16 ? 16 : raw.length);
        bytes32[] memory leaves = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            bytes32 record = raw.length > i ? raw[i] : bytes32(0);
            leaves[i] = registry.recordLeaf(record, _contributor(i));
        }
        vm.prank(owner);
        uint256 index = registry.publishSnapshot(id, TestMerkle.root(leaves), uint48(n));
        for (uint256 i; i < n; ++i) {
            bytes32 record = raw.length > i ? raw[i] : bytes32(0);
            bytes32[] memory proof = TestMerkle.proof(leaves, i);
            assertTrue(registry.containsRecord(id, index, record, _contributor(i), proof), "member");
            assertTrue(!registry.containsRecord(id, index, record, address(0xdead), proof), "wrong contributor");
        }
    }

    function testFuzz_onlyOwnerOrCuratorPublishes(address caller) public {
        vm.assume(caller != owner);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPublisher.selector, id, caller));
        vm.prank(caller);
        registry.publishSnapshot(id, bytes32(uint256(1)), 1);
        vm.prank(owner);
        registry.setCurator(id, caller == address(0) ? address(1) : caller, true);
        if (caller != address(0)) {
            vm.prank(caller);
            assertEq(registry.publishSnapshot(id, bytes32(uint256(1)), 1), 0, "curator publishes");
        }
    }

    function test_snapshotsAreAppendOnlyAndIndexed() public {
        vm.startPrank(owner);
        registry.publishSnapshot(id, bytes32(uint256(1)), 10);
        registry.publishSnapshot(id, bytes32(uint256(2)), 20);
        vm.stopPrank();
        assertEq(registry.snapshotCount(id), 2, "count");
        assertEq(registry.getSnapshot(id, 1).root, bytes32(uint256(2)), "second root");
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.UnknownSnapshot.selector, id, 2));
        registry.getSnapshot(id, 2);
    }

    function test_publishBySigAcceptsOwnerSignatureOnce() public {
        bytes memory sig = _signPublish(OWNER_KEY, bytes32(uint256(7)), 3, 1 days);
        registry.publishSnapshotBySig(id, bytes32(uint256(7)), 3, owner, 1 days, sig);
        assertEq(registry.getSnapshot(id, 0).publisher, owner, "publisher is signer");
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.InvalidSignature.selector, owner));
        registry.publishSnapshotBySig(id, bytes32(uint256(7)), 3, owner, 1 days, sig);
    }

    function test_ownershipMovesInTwoStepsAndClearsCurators() public {
        address next = address(0xB0B);
        address curator = address(0xC0C);
        vm.startPrank(owner);
        registry.setCurator(id, curator, true);
        registry.transferDatanetOwnership(id, next);
        vm.stopPrank();
        assertEq(registry.getDatanet(id).owner, owner, "owner until accepted");
        assertEq(registry.pendingOwner(id), next, "pending");
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingOwner.selector, id, curator));
        vm.prank(curator);
        registry.acceptDatanetOwnership(id);
        vm.prank(next);
        registry.acceptDatanetOwnership(id);
        assertEq(registry.getDatanet(id).owner, next, "new owner");
        assertEq(registry.pendingOwner(id), address(0), "offer used");
        assertTrue(!registry.isPublisher(id, curator), "curator cleared");
        assertTrue(!registry.isPublisher(id, owner), "old owner is no publisher");
        vm.prank(next);
        registry.setCurator(id, curator, true);
        assertTrue(registry.isPublisher(id, curator), "new owner may appoint again");
    }

    /// Attack: after a transfer the old owner and its curators try to keep publishing,
    /// directly and with a signature made before the transfer.
    function test_oldOwnerCannotPublishAfterTransfer() public {
        address next = address(0xB0B);
        address curator = address(0xC0C);
        bytes memory early = _signPublish(OWNER_KEY, bytes32(uint256(7)), 3, 1 days);
        vm.startPrank(owner);
        registry.setCurator(id, curator, true);
        registry.transferDatanetOwnership(id, next);
        vm.stopPrank();
        vm.prank(next);
        registry.acceptDatanetOwnership(id);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPublisher.selector, id, owner));
        vm.prank(owner);
        registry.publishSnapshot(id, bytes32(uint256(1)), 1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPublisher.selector, id, curator));
        vm.prank(curator);
        registry.publishSnapshot(id, bytes32(uint256(1)), 1);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPublisher.selector, id, owner));
        registry.publishSnapshotBySig(id, bytes32(uint256(7)), 3, owner, 1 days, early);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotDatanetOwner.selector, id, owner));
        vm.prank(owner);
        registry.setCurator(id, owner, true);
        assertEq(registry.snapshotCount(id), 0, "nothing published");
    }

    function test_pendingTransferCanBeWithdrawn() public {
        vm.startPrank(owner);
        registry.transferDatanetOwnership(id, address(0xB0B));
        registry.transferDatanetOwnership(id, address(0));
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingOwner.selector, id, address(0xB0B)));
        vm.prank(address(0xB0B));
        registry.acceptDatanetOwnership(id);
    }

    function testFuzz_publishBySigRejectsWrongSigner(uint256 key) public {
        key = bound(key, 1, 1e70);
        vm.assume(key != OWNER_KEY);
        bytes memory sig = _signPublish(key, bytes32(uint256(7)), 3, 1 days);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.InvalidSignature.selector, owner));
        registry.publishSnapshotBySig(id, bytes32(uint256(7)), 3, owner, 1 days, sig);
        address signer = vm.addr(key);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPublisher.selector, id, signer));
        registry.publishSnapshotBySig(id, bytes32(uint256(7)), 3, signer, 1 days, sig);
        assertEq(registry.snapshotCount(id), 0, "no state change");
    }
}

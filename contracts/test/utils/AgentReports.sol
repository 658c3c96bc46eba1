// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {AgentRegistry} from "../../src/AgentRegistry.sol";
import {Vm} from "./TestBase.sol";

/// @notice Signs failed-service reports the way a served user's wallet does (EIP-712).
library AgentReports {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    function sign(AgentRegistry registry, uint256 key, AgentRegistry.FailedServiceReport memory r)
        internal
        view
        returns (bytes memory)
    {
        bytes32 structHash = keccak256(
            abi.encode(
                registry.FAILED_SERVICE_REPORT_TYPEHASH(),
                r.agent,
                r.modelId,
                r.requestHash,
                r.evidenceHash,
                registry.nonces(vm.addr(key)),
                r.deadline
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", registry.domainSeparator(), structHash));
        (uint8 v, bytes32 rs, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(rs, s, v);
    }

    function failure(address agent, bytes32 requestHash)
        internal
        pure
        returns (AgentRegistry.FailedServiceReport memory)
    {
        return AgentRegistry.FailedServiceReport(agent, keccak256("model"), requestHash, keccak256("evidence"), 1e12);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {
    AccessControlDefaultAdminRules
} from "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title AgentRegistry
/// @notice Agents (addresses that serve models or compose adapters) bond OPEN to be listed,
///         and lose part of it when they fail the people they serve.
/// @dev Life of a stake: `register` (at least `minStake`) -> `beginUnbonding` -> after
///      `unbondingPeriod`, `withdraw`. Unbonding stake can still be slashed, and nothing is
///      withdrawn while a dispute against the agent is open.
///
///      Dispute flow: a user signs an EIP-712 `FailedServiceReport` (agent, model, request,
///      evidence hash); anyone relays it with `report`, which pulls `reportBond` from the
///      reporter and opens a dispute. Within `challengeWindow` the agent may `challenge` it
///      with its own evidence hash; an unchallenged dispute is slashed by anyone with
///      `executeSlash` after the window, a challenged one is decided by `SLASHER_ROLE`
///      (governance) with `resolve`. A slash takes `slashBps` of the agent's bonded stake:
///      `reporterShareBps` of it goes to the reporter (with the bond back), the rest to the
///      treasury. A rejected report's bond goes to the agent. `SLASHER_ROLE` may also `slash`
///      directly, to the treasury.
///
///      Invariant: the token balance equals `totalBonded + totalReportBonds`, and
///      `totalBonded` equals the sum of `stake + unbonding` over agents.
contract AgentRegistry is AccessControlDefaultAdminRules, ReentrancyGuardTransient, EIP712, Nonces {
    using SafeERC20 for IERC20;

    struct Params {
        uint256 minStake;
        uint256 reportBond;
        uint64 unbondingPeriod;
        uint64 challengeWindow;
        uint16 slashBps;
        uint16 reporterShareBps;
    }

    struct Agent {
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingEnds;
        uint32 openDisputes;
        bool registered;
        bytes32[] modelIds;
    }

    enum DisputeStatus {
        None,
        Open,
        Challenged,
        Upheld,
        Rejected
    }

    struct Dispute {
        address agent;
        address reporter;
        DisputeStatus status;
        uint64 challengeEnds;
        bytes32 modelId;
        bytes32 requestHash;
        bytes32 evidenceHash;
        bytes32 counterEvidenceHash;
        uint256 bond;
    }

    /// @notice The report a served user signs (EIP-712).
    struct FailedServiceReport {
        address agent;
        bytes32 modelId;
        bytes32 requestHash;
        bytes32 evidenceHash;
        uint256 deadline;
    }

    /// @notice Role that decides challenged disputes and slashes directly (governance).
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");

    /// @notice EIP-712 type of a failed-service report.
    bytes32 public constant FAILED_SERVICE_REPORT_TYPEHASH = keccak256(
        "FailedServiceReport(address agent,bytes32 modelId,bytes32 requestHash,bytes32 evidenceHash,uint256 nonce,uint256 deadline)"
    );

    /// @notice Seconds between starting and accepting an admin transfer.
    uint48 public constant ADMIN_TRANSFER_DELAY = 1 days;

    uint16 internal constant BPS = 10_000;

    /// @notice The token stakes and bonds are paid in.
    IERC20 public immutable token;

    /// @notice Where the protocol's part of every slash goes.
    address public treasury;

    /// @notice Sum of `stake + unbonding` over all agents.
    uint256 public totalBonded;

    /// @notice Sum of the bonds of undecided reports.
    uint256 public totalReportBonds;

    /// @notice How many disputes have been opened (ids are 1..disputeCount).
    uint256 public disputeCount;

    Params private _params;
    mapping(address agent => Agent) private _agents;
    mapping(uint256 disputeId => Dispute) private _disputes;

    event AgentRegistered(address indexed agent, uint256 stake, bytes32[] modelIds);
    event StakeAdded(address indexed agent, uint256 amount, uint256 stake);
    event ModelsDeclared(address indexed agent, bytes32[] modelIds);
    event UnbondingStarted(address indexed agent, uint256 amount, uint64 unbondingEnds);
    event Withdrawn(address indexed agent, uint256 amount);
    event Reported(
        uint256 indexed disputeId,
        address indexed agent,
        address indexed reporter,
        bytes32 modelId,
        bytes32 requestHash,
        bytes32 evidenceHash,
        uint64 challengeEnds
    );
    event Challenged(uint256 indexed disputeId, address indexed agent, bytes32 counterEvidenceHash);
    event DisputeResolved(uint256 indexed disputeId, bool upheld);
    event Slashed(
        address indexed agent, uint256 indexed disputeId, uint256 amount, uint256 toReporter, uint256 toTreasury
    );
    event ParamsChanged(Params params);
    event TreasuryChanged(address indexed treasury);

    error ZeroAddress();
    error InvalidParams();
    error AlreadyRegistered(address agent);
    error NotRegistered(address agent);
    error StakeBelowMinimum(uint256 stake, uint256 minStake);
    error ZeroAmount();
    error UnbondingExceedsStake(uint256 amount, uint256 stake);
    error StillUnbonding(uint64 unbondingEnds);
    error NothingToWithdraw(address agent);
    error DisputesOpen(address agent, uint32 openDisputes);
    error FundingShortfall(uint256 expected, uint256 received);
    error SignatureExpired(uint256 deadline);
    error InvalidSignature(address signer);
    error SelfReport(address agent);
    error UnknownDispute(uint256 disputeId);
    error DisputeNotOpen(uint256 disputeId, DisputeStatus status);
    error DisputeNotChallenged(uint256 disputeId, DisputeStatus status);
    error ChallengeWindowClosed(uint256 disputeId, uint64 challengeEnds);
    error ChallengeWindowOpen(uint256 disputeId, uint64 challengeEnds);
    error NotDisputedAgent(uint256 disputeId, address account);

    /// @param token_ The staking token.
    /// @param admin Default admin (sets parameters, roles and the treasury).
    /// @param slasher First holder of `SLASHER_ROLE` (`address(0)`: none yet).
    /// @param treasury_ Receives the protocol's part of slashes.
    /// @param params_ Stake, bond, periods and slashing rates (see `Params`).
    constructor(IERC20 token_, address admin, address slasher, address treasury_, Params memory params_)
        AccessControlDefaultAdminRules(ADMIN_TRANSFER_DELAY, admin)
        EIP712("OpenLedger AgentRegistry", "1")
    {
        if (address(token_) == address(0)) revert ZeroAddress();
        token = token_;
        if (slasher != address(0)) _grantRole(SLASHER_ROLE, slasher);
        _setTreasury(treasury_);
        _setParams(params_);
    }

    // ---------------------------------------------------------------- staking

    /// @notice Register the caller as an agent with `amount` staked, serving `modelIds`.
    function register(uint256 amount, bytes32[] calldata modelIds) external nonReentrant {
        Agent storage agent = _agents[msg.sender];
        if (agent.registered) revert AlreadyRegistered(msg.sender);
        if (amount < _params.minStake) revert StakeBelowMinimum(amount, _params.minStake);
        agent.registered = true;
        agent.stake = amount;
        agent.modelIds = modelIds;
        totalBonded += amount;
        _pull(msg.sender, amount);
        emit AgentRegistered(msg.sender, amount, modelIds);
    }

    /// @notice Add `amount` to the caller's stake.
    function addStake(uint256 amount) external nonReentrant {
        Agent storage agent = _requireAgent(msg.sender);
        if (amount == 0) revert ZeroAmount();
        agent.stake += amount;
        totalBonded += amount;
        _pull(msg.sender, amount);
        emit StakeAdded(msg.sender, amount, agent.stake);
    }

    /// @notice Replace the list of models the caller serves.
    function declareModels(bytes32[] calldata modelIds) external {
        _requireAgent(msg.sender).modelIds = modelIds;
        emit ModelsDeclared(msg.sender, modelIds);
    }

    /// @notice Move `amount` of the caller's stake to unbonding; the clock restarts.
    /// @dev What stays staked must be zero or at least `minStake`.
    function beginUnbonding(uint256 amount) external {
        Agent storage agent = _requireAgent(msg.sender);
        if (amount == 0) revert ZeroAmount();
        if (amount > agent.stake) revert UnbondingExceedsStake(amount, agent.stake);
        uint256 left = agent.stake - amount;
        if (left != 0 && left < _params.minStake) revert StakeBelowMinimum(left, _params.minStake);
        agent.stake = left;
        agent.unbonding += amount;
        agent.unbondingEnds = uint64(block.timestamp) + _params.unbondingPeriod;
        emit UnbondingStarted(msg.sender, amount, agent.unbondingEnds);
    }

    /// @notice Withdraw the caller's unbonded stake once the period is over and no dispute
    ///         against it is open.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Agent storage agent = _requireAgent(msg.sender);
        amount = agent.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < agent.unbondingEnds) revert StillUnbonding(agent.unbondingEnds);
        if (agent.openDisputes != 0) revert DisputesOpen(msg.sender, agent.openDisputes);
        agent.unbonding = 0;
        totalBonded -= amount;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    // --------------------------------------------------------------- disputes

    /// @notice Open a dispute from a report signed by `reporter`; anyone may relay it. The
    ///         report bond is pulled from the reporter, who must have approved it.
    function report(FailedServiceReport calldata r, address reporter, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 disputeId)
    {
        if (block.timestamp > r.deadline) revert SignatureExpired(r.deadline);
        _checkReportSignature(r, reporter, signature);
        if (reporter == r.agent) revert SelfReport(r.agent);
        Agent storage agent = _requireAgent(r.agent);
        disputeId = ++disputeCount;
        uint64 challengeEnds = uint64(block.timestamp) + _params.challengeWindow;
        uint256 bond = _params.reportBond;
        _disputes[disputeId] = Dispute(
            r.agent,
            reporter,
            DisputeStatus.Open,
            challengeEnds,
            r.modelId,
            r.requestHash,
            r.evidenceHash,
            bytes32(0),
            bond
        );
        ++agent.openDisputes;
        totalReportBonds += bond;
        _pull(reporter, bond);
        emit Reported(disputeId, r.agent, reporter, r.modelId, r.requestHash, r.evidenceHash, challengeEnds);
    }

    /// @notice Contest an open dispute against the caller, within the challenge window.
    function challenge(uint256 disputeId, bytes32 counterEvidenceHash) external {
        Dispute storage dispute = _requireDispute(disputeId);
        if (dispute.agent != msg.sender) revert NotDisputedAgent(disputeId, msg.sender);
        if (dispute.status != DisputeStatus.Open) revert DisputeNotOpen(disputeId, dispute.status);
        if (block.timestamp > dispute.challengeEnds) revert ChallengeWindowClosed(disputeId, dispute.challengeEnds);
        dispute.status = DisputeStatus.Challenged;
        dispute.counterEvidenceHash = counterEvidenceHash;
        emit Challenged(disputeId, msg.sender, counterEvidenceHash);
    }

    /// @notice Slash an unchallenged dispute once its challenge window is over (anyone).
    function executeSlash(uint256 disputeId) external nonReentrant returns (uint256 amount) {
        Dispute storage dispute = _requireDispute(disputeId);
        if (dispute.status != DisputeStatus.Open) revert DisputeNotOpen(disputeId, dispute.status);
        if (block.timestamp <= dispute.challengeEnds) revert ChallengeWindowOpen(disputeId, dispute.challengeEnds);
        return _uphold(disputeId, dispute);
    }

    /// @notice Decide a challenged dispute (slasher only): uphold slashes the agent, reject
    ///         pays the report bond to the agent.
    function resolve(uint256 disputeId, bool upheld) external onlyRole(SLASHER_ROLE) nonReentrant {
        Dispute storage dispute = _requireDispute(disputeId);
        if (dispute.status != DisputeStatus.Challenged) revert DisputeNotChallenged(disputeId, dispute.status);
        if (upheld) {
            _uphold(disputeId, dispute);
            return;
        }
        dispute.status = DisputeStatus.Rejected;
        _closeDispute(dispute);
        emit DisputeResolved(disputeId, false);
        if (dispute.bond != 0) token.safeTransfer(dispute.agent, dispute.bond);
    }

    /// @notice Slash `amount` of an agent's bonded stake to the treasury (slasher only).
    function slash(address agentAddress, uint256 amount) external onlyRole(SLASHER_ROLE) nonReentrant {
        Agent storage agent = _requireAgent(agentAddress);
        if (amount == 0) revert ZeroAmount();
        uint256 taken = _take(agent, amount);
        emit Slashed(agentAddress, 0, taken, 0, taken);
        token.safeTransfer(treasury, taken);
    }

    // ------------------------------------------------------------------ admin

    /// @notice Change stake, bond, periods and rates (admin only).
    function setParams(Params calldata params_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParams(params_);
    }

    /// @notice Change where the protocol's part of slashes goes (admin only).
    function setTreasury(address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTreasury(treasury_);
    }

    // ------------------------------------------------------------------ views

    /// @notice The current parameters.
    function params() external view returns (Params memory) {
        return _params;
    }

    /// @notice An agent; reverts with `NotRegistered` if it never registered.
    function getAgent(address agent) external view returns (Agent memory) {
        Agent storage found = _requireAgent(agent);
        return found;
    }

    /// @notice Whether `agent` is registered with at least `minStake` staked.
    function isActive(address agent) external view returns (bool) {
        Agent storage found = _agents[agent];
        return found.registered && found.stake >= _params.minStake;
    }

    /// @notice A dispute; reverts with `UnknownDispute` if there is none.
    function getDispute(uint256 disputeId) external view returns (Dispute memory) {
        return _requireDispute(disputeId);
    }

    /// @notice The EIP-712 domain separator of this registry.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // --------------------------------------------------------------- internal

    function _uphold(uint256 disputeId, Dispute storage dispute) private returns (uint256 amount) {
        Agent storage agent = _agents[dispute.agent];
        dispute.status = DisputeStatus.Upheld;
        _closeDispute(dispute);
        amount = _take(agent, ((agent.stake + agent.unbonding) * _params.slashBps) / BPS);
        uint256 toReporter = (amount * _params.reporterShareBps) / BPS;
        uint256 toTreasury = amount - toReporter;
        emit DisputeResolved(disputeId, true);
        emit Slashed(dispute.agent, disputeId, amount, toReporter, toTreasury);
        if (toReporter + dispute.bond != 0) token.safeTransfer(dispute.reporter, toReporter + dispute.bond);
        if (toTreasury != 0) token.safeTransfer(treasury, toTreasury);
    }

    function _closeDispute(Dispute storage dispute) private {
        --_agents[dispute.agent].openDisputes;
        totalReportBonds -= dispute.bond;
    }

    /// @dev Takes from the active stake first, then from unbonding; returns what was taken.
    function _take(Agent storage agent, uint256 amount) private returns (uint256 taken) {
        uint256 fromStake = amount < agent.stake ? amount : agent.stake;
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < agent.unbonding ? rest : agent.unbonding;
        agent.stake -= fromStake;
        agent.unbonding -= fromUnbonding;
        taken = fromStake + fromUnbonding;
        totalBonded -= taken;
    }

    function _pull(address from, uint256 amount) private {
        if (amount == 0) return;
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(from, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert FundingShortfall(amount, received);
    }

    function _checkReportSignature(FailedServiceReport calldata r, address reporter, bytes calldata signature) private {
        bytes32 structHash = keccak256(
            abi.encode(
                FAILED_SERVICE_REPORT_TYPEHASH,
                r.agent,
                r.modelId,
                r.requestHash,
                r.evidenceHash,
                _useNonce(reporter),
                r.deadline
            )
        );
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(_hashTypedDataV4(structHash), signature);
        if (err != ECDSA.RecoverError.NoError || recovered != reporter || reporter == address(0)) {
            revert InvalidSignature(reporter);
        }
    }

    function _requireAgent(address account) private view returns (Agent storage agent) {
        agent = _agents[account];
        if (!agent.registered) revert NotRegistered(account);
    }

    function _requireDispute(uint256 disputeId) private view returns (Dispute storage dispute) {
        dispute = _disputes[disputeId];
        if (dispute.status == DisputeStatus.None) revert UnknownDispute(disputeId);
    }

    function _setParams(Params memory p) private {
        if (
            p.minStake == 0 || p.slashBps > BPS || p.reporterShareBps > BPS || p.challengeWindow == 0
                || p.unbondingPeriod < p.challengeWindow
        ) revert InvalidParams();
        _params = p;
        emit ParamsChanged(p);
    }

    function _setTreasury(address treasury_) private {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }
}

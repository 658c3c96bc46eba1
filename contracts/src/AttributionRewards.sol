// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {
    AccessControlDefaultAdminRules
} from "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ContributionVotes} from "./ContributionVotes.sol";

/// @title AttributionRewards
/// @notice Reward epochs settled from proof of attribution, claimed with Merkle proofs.
/// @dev An epoch root is an OpenZeppelin StandardMerkleTree root over leaves
///      `(address account, uint256 amount)`, i.e.
///      `keccak256(bytes.concat(keccak256(abi.encode(account, amount))))`.
///      A settler posts an epoch and funds its whole total in the same call; its deadline
///      leaves at least `minClaimWindow` seconds to claim. Each account claims its amount
///      once before the deadline; after it anyone may sweep what is left, always to the
///      `treasury`. The contract's balance always equals the sum of `remaining` over
///      unswept epochs. Every function that moves tokens is `nonReentrant`.
///      Every paid claim earns the account as many votes in `votes` (a `ContributionVotes`
///      this contract creates and alone mints), so the votes ever earned equal the rewards
///      ever claimed.
contract AttributionRewards is AccessControlDefaultAdminRules, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    // NOTE: `remaining`, `deadline` and `swept` share one slot so a claim touches two slots.
    struct Epoch {
        bytes32 root;
        uint128 remaining;
        uint64 deadline;
        bool swept;
        uint128 total;
    }

    /// @notice Role allowed to post epochs.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    /// @notice Seconds between starting and accepting an admin transfer.
    uint48 public constant ADMIN_TRANSFER_DELAY = 1 days;

    /// @notice The shortest claim window the admin may set.
    uint64 public constant MIN_CLAIM_WINDOW_FLOOR = 1 hours;

    /// @notice The longest claim window the admin may require.
    uint64 public constant MAX_CLAIM_WINDOW = 365 days;

    /// @notice The ERC-20 every epoch is paid in.
    IERC20 public immutable token;

    /// @notice The contribution-weighted votes every paid claim earns.
    ContributionVotes public immutable votes;

    /// @notice Where swept (unclaimed, expired) rewards go.
    address public treasury;

    /// @notice Every epoch's deadline is at least this many seconds after it is posted.
    uint64 public minClaimWindow;

    mapping(uint256 epochId => Epoch) private _epochs;
    // NOTE: claimed flags are a bitmap per account over 256 consecutive epoch ids, so an
    //       account that claims epoch after epoch writes a non-zero slot (5k gas, not 22k).
    mapping(address account => mapping(uint256 word => uint256 bits)) private _claimedBits;

    event EpochPosted(uint256 indexed epochId, bytes32 root, uint256 total, uint64 deadline, address indexed settler);
    event Claimed(uint256 indexed epochId, address indexed account, uint256 amount);
    event Swept(uint256 indexed epochId, address indexed to, uint256 amount);
    event TreasuryChanged(address indexed treasury);
    event MinClaimWindowChanged(uint64 minClaimWindow);

    error ZeroAddress();
    error ZeroRoot();
    error ZeroTotal();
    error TotalTooLarge(uint256 total);
    error DeadlineNotInFuture(uint64 deadline, uint256 timestamp);
    error ClaimWindowTooShort(uint64 deadline, uint256 earliestDeadline);
    error ClaimWindowOutOfRange(uint64 minClaimWindow);
    error EpochAlreadyPosted(uint256 epochId);
    error UnknownEpoch(uint256 epochId);
    error InsufficientFunding(uint256 epochId, uint256 required, uint256 available);
    error FundingShortfall(uint256 epochId, uint256 expected, uint256 received);
    error ClaimWindowClosed(uint256 epochId, uint64 deadline);
    error AlreadyClaimed(uint256 epochId, address account);
    error InvalidProof(uint256 epochId, address account, uint256 amount);
    error ClaimExceedsRemaining(uint256 epochId, uint256 amount, uint256 remaining);
    error EpochStillOpen(uint256 epochId, uint64 deadline);
    error AlreadySwept(uint256 epochId);

    /// @param token_ The ERC-20 epochs are paid in.
    /// @param admin Default admin (sets roles, the treasury and the claim window).
    /// @param settler First holder of `SETTLER_ROLE` (`address(0)`: none yet).
    /// @param treasury_ Destination of swept rewards.
    /// @param minClaimWindow_ Shortest claim window, in `[MIN_CLAIM_WINDOW_FLOOR, MAX_CLAIM_WINDOW]`.
    constructor(IERC20 token_, address admin, address settler, address treasury_, uint64 minClaimWindow_)
        AccessControlDefaultAdminRules(ADMIN_TRANSFER_DELAY, admin)
    {
        if (address(token_) == address(0)) revert ZeroAddress();
        token = token_;
        votes = new ContributionVotes(address(this));
        if (settler != address(0)) _grantRole(SETTLER_ROLE, settler);
        _setTreasury(treasury_);
        _setMinClaimWindow(minClaimWindow_);
    }

    /// @notice Change where swept rewards go (admin only).
    function setTreasury(address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTreasury(treasury_);
    }

    /// @notice Change the shortest claim window of new epochs (admin only).
    function setMinClaimWindow(uint64 minClaimWindow_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMinClaimWindow(minClaimWindow_);
    }

    /// @notice The Merkle leaf of one payout, as StandardMerkleTree builds it.
    function rewardLeaf(address account, uint256 amount) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
    }

    /// @notice Post epoch `epochId` and pull its `total` from the caller (settler only).
    /// @dev The caller must have approved at least `total`; tokens that deliver less than the
    ///      amount sent (fee on transfer) are refused with `FundingShortfall`. The epoch is
    ///      written before the token is called (checks, effects, interactions).
    function postEpoch(uint256 epochId, bytes32 root, uint256 total, uint64 deadline)
        external
        onlyRole(SETTLER_ROLE)
        nonReentrant
    {
        _checkNewEpoch(epochId, root, total, deadline);
        uint256 available = _min(token.allowance(msg.sender, address(this)), token.balanceOf(msg.sender));
        if (available < total) revert InsufficientFunding(epochId, total, available);
        _epochs[epochId] = Epoch(root, uint128(total), deadline, false, uint128(total));
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), total);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != total) revert FundingShortfall(epochId, total, received);
        emit EpochPosted(epochId, root, total, deadline, msg.sender);
    }

    /// @notice Claim the caller's `amount` of epoch `epochId`.
    function claim(uint256 epochId, uint256 amount, bytes32[] calldata proof) external nonReentrant {
        _claim(epochId, msg.sender, amount, proof);
    }

    /// @notice Pay `account` its `amount` of epoch `epochId`; anyone may relay it, the tokens
    ///         always go to `account`.
    function claimFor(uint256 epochId, address account, uint256 amount, bytes32[] calldata proof)
        external
        nonReentrant
    {
        _claim(epochId, account, amount, proof);
    }

    /// @notice Send what is left of an epoch past its deadline to the treasury; anyone may
    ///         call it, the destination is fixed.
    function sweep(uint256 epochId) external nonReentrant returns (uint256 amount) {
        Epoch storage epoch = _requireEpoch(epochId);
        if (block.timestamp <= epoch.deadline) revert EpochStillOpen(epochId, epoch.deadline);
        if (epoch.swept) revert AlreadySwept(epochId);
        amount = epoch.remaining;
        epoch.remaining = 0;
        epoch.swept = true;
        address to = treasury;
        token.safeTransfer(to, amount);
        emit Swept(epochId, to, amount);
    }

    /// @notice An epoch; reverts with `UnknownEpoch` if it was never posted.
    function getEpoch(uint256 epochId) external view returns (Epoch memory) {
        return _requireEpoch(epochId);
    }

    /// @notice Whether `account` has claimed from epoch `epochId`.
    function isClaimed(uint256 epochId, address account) public view returns (bool) {
        return (_claimedBits[account][epochId >> 8] >> (epochId & 0xff)) & 1 == 1;
    }

    function _claim(uint256 epochId, address account, uint256 amount, bytes32[] calldata proof) private {
        Epoch storage epoch = _requireEpoch(epochId);
        if (block.timestamp > epoch.deadline) revert ClaimWindowClosed(epochId, epoch.deadline);
        if (isClaimed(epochId, account)) revert AlreadyClaimed(epochId, account);
        if (!MerkleProof.verifyCalldata(proof, epoch.root, rewardLeaf(account, amount))) {
            revert InvalidProof(epochId, account, amount);
        }
        uint128 remaining = epoch.remaining;
        // NOTE: only a root whose leaves sum past its funded total can get here.
        if (amount > remaining) revert ClaimExceedsRemaining(epochId, amount, remaining);
        _claimedBits[account][epochId >> 8] |= 1 << (epochId & 0xff);
        epoch.remaining = remaining - uint128(amount);
        votes.earn(account, amount);
        token.safeTransfer(account, amount);
        emit Claimed(epochId, account, amount);
    }

    function _checkNewEpoch(uint256 epochId, bytes32 root, uint256 total, uint64 deadline) private view {
        if (_epochs[epochId].root != bytes32(0)) revert EpochAlreadyPosted(epochId);
        if (root == bytes32(0)) revert ZeroRoot();
        if (total == 0) revert ZeroTotal();
        if (total > type(uint128).max) revert TotalTooLarge(total);
        if (deadline <= block.timestamp) revert DeadlineNotInFuture(deadline, block.timestamp);
        uint256 earliest = block.timestamp + minClaimWindow;
        if (deadline < earliest) revert ClaimWindowTooShort(deadline, earliest);
    }

    function _setTreasury(address treasury_) private {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }

    function _setMinClaimWindow(uint64 window) private {
        if (window < MIN_CLAIM_WINDOW_FLOOR || window > MAX_CLAIM_WINDOW) revert ClaimWindowOutOfRange(window);
        minClaimWindow = window;
        emit MinClaimWindowChanged(window);
    }

    function _requireEpoch(uint256 epochId) private view returns (Epoch storage epoch) {
        epoch = _epochs[epochId];
        if (epoch.root == bytes32(0)) revert UnknownEpoch(epochId);
    }

    function _min(uint256 a, uint256 b) private pure returns (uint256) {
        return a < b ? a : b;
    }
}

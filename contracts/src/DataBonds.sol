// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {
    AccessControlDefaultAdminRules
} from "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {DatanetRegistry} from "./DatanetRegistry.sol";

/// @title DataBonds
/// @notice Contributors to a datanet bond OPEN; a record a validator flags as malicious or
///         duplicate costs its contributor part of that bond.
/// @dev A datanet's owner (in `DatanetRegistry`) sets its policy: the bond a contributor
///      must hold to be `isBonded`, the share of a bond a flag takes (at most the protocol's
///      `maxSlashBps`) and the unbonding delay. A validator (the datanet's owner or a curator)
///      flags a record with the hash of its off-chain review; the penalty, `slashBps` of the
///      contributor's bonded plus unbonding tokens, goes to the `treasury`. Each record is
///      flagged at most once. Unbonding tokens stay slashable until withdrawn.
///
///      Invariant: the token balance equals `totalBonded`, the sum of `bonded + unbonding`
///      over all bonds.
contract DataBonds is AccessControlDefaultAdminRules, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    enum FlagKind {
        None,
        Malicious,
        Duplicate
    }

    struct Policy {
        uint128 bondAmount;
        uint64 unbondingDelay;
        uint16 slashBps;
    }

    struct Bond {
        uint128 bonded;
        uint128 unbonding;
        uint64 unbondingEnds;
    }

    struct Flag {
        address contributor;
        FlagKind kind;
        uint64 flaggedAt;
        address validator;
        uint128 penalty;
        bytes32 reviewHash;
    }

    /// @notice Seconds between starting and accepting an admin transfer.
    uint48 public constant ADMIN_TRANSFER_DELAY = 1 days;

    /// @notice Bounds of a datanet's unbonding delay.
    uint64 public constant MIN_UNBONDING_DELAY = 1 hours;
    uint64 public constant MAX_UNBONDING_DELAY = 365 days;

    uint16 internal constant BPS = 10_000;

    /// @notice The token bonds are paid in.
    IERC20 public immutable token;

    /// @notice Where datanets, their owners and curators are registered.
    DatanetRegistry public immutable datanets;

    /// @notice Where penalties go.
    address public treasury;

    /// @notice The highest slash rate a datanet owner may set (basis points).
    uint16 public maxSlashBps;

    /// @notice Sum of `bonded + unbonding` over all bonds.
    uint256 public totalBonded;

    mapping(bytes32 datanetId => Policy) private _policies;
    mapping(bytes32 datanetId => mapping(address contributor => Bond)) private _bonds;
    mapping(bytes32 datanetId => mapping(bytes32 recordHash => Flag)) private _flags;

    event PolicySet(bytes32 indexed datanetId, uint128 bondAmount, uint16 slashBps, uint64 unbondingDelay);
    event Bonded(bytes32 indexed datanetId, address indexed contributor, uint256 amount, uint256 bonded);
    event UnbondingStarted(
        bytes32 indexed datanetId, address indexed contributor, uint256 amount, uint64 unbondingEnds
    );
    event Withdrawn(bytes32 indexed datanetId, address indexed contributor, uint256 amount);
    event RecordFlagged(
        bytes32 indexed datanetId,
        bytes32 indexed recordHash,
        address indexed contributor,
        FlagKind kind,
        bytes32 reviewHash,
        address validator,
        uint256 penalty
    );
    event TreasuryChanged(address indexed treasury);
    event MaxSlashBpsChanged(uint16 maxSlashBps);

    error ZeroAddress();
    error ZeroAmount();
    error ZeroReviewHash();
    error InvalidFlagKind();
    error NotDatanetOwner(bytes32 datanetId, address account);
    error NotValidator(bytes32 datanetId, address account);
    error NoPolicy(bytes32 datanetId);
    error SlashRateTooHigh(uint16 slashBps, uint16 maxSlashBps);
    error UnbondingDelayOutOfRange(uint64 unbondingDelay);
    error UnbondingExceedsBond(uint256 amount, uint256 bonded);
    error StillUnbonding(uint64 unbondingEnds);
    error NothingToWithdraw(bytes32 datanetId, address contributor);
    error AlreadyFlagged(bytes32 datanetId, bytes32 recordHash);
    error FundingShortfall(uint256 expected, uint256 received);

    /// @param token_ The bond token.
    /// @param datanets_ The datanet registry (owners set policies, owners and curators flag).
    /// @param admin Default admin (sets the treasury and the highest slash rate).
    /// @param treasury_ Receives penalties.
    /// @param maxSlashBps_ The highest slash rate a datanet may set.
    constructor(IERC20 token_, DatanetRegistry datanets_, address admin, address treasury_, uint16 maxSlashBps_)
        AccessControlDefaultAdminRules(ADMIN_TRANSFER_DELAY, admin)
    {
        if (address(token_) == address(0) || address(datanets_) == address(0)) revert ZeroAddress();
        token = token_;
        datanets = datanets_;
        _setTreasury(treasury_);
        _setMaxSlashBps(maxSlashBps_);
    }

    // ---------------------------------------------------------------- owners

    /// @notice Set a datanet's bond, slash rate and unbonding delay (datanet owner only).
    /// @dev A rate change applies to flags from now on, to bonds already held too.
    function setPolicy(bytes32 datanetId, uint128 bondAmount, uint16 slashBps, uint64 unbondingDelay) external {
        address owner = datanets.getDatanet(datanetId).owner;
        if (owner != msg.sender) revert NotDatanetOwner(datanetId, msg.sender);
        if (bondAmount == 0) revert ZeroAmount();
        if (slashBps > maxSlashBps) revert SlashRateTooHigh(slashBps, maxSlashBps);
        if (unbondingDelay < MIN_UNBONDING_DELAY || unbondingDelay > MAX_UNBONDING_DELAY) {
            revert UnbondingDelayOutOfRange(unbondingDelay);
        }
        _policies[datanetId] = Policy(bondAmount, unbondingDelay, slashBps);
        emit PolicySet(datanetId, bondAmount, slashBps, unbondingDelay);
    }

    // ---------------------------------------------------------- contributors

    /// @notice Bond `amount` more for the caller in a datanet that has a policy (approve first).
    function bond(bytes32 datanetId, uint256 amount) external nonReentrant {
        if (_policies[datanetId].bondAmount == 0) revert NoPolicy(datanetId);
        if (amount == 0) revert ZeroAmount();
        Bond storage found = _bonds[datanetId][msg.sender];
        found.bonded += SafeCast.toUint128(amount);
        totalBonded += amount;
        _pull(msg.sender, amount);
        emit Bonded(datanetId, msg.sender, amount, found.bonded);
    }

    /// @notice Move `amount` of the caller's bond to unbonding; the delay restarts.
    function beginUnbonding(bytes32 datanetId, uint256 amount) external {
        Bond storage found = _bonds[datanetId][msg.sender];
        if (amount == 0) revert ZeroAmount();
        if (amount > found.bonded) revert UnbondingExceedsBond(amount, found.bonded);
        found.bonded -= uint128(amount);
        found.unbonding += uint128(amount);
        found.unbondingEnds = uint64(block.timestamp) + _policies[datanetId].unbondingDelay;
        emit UnbondingStarted(datanetId, msg.sender, amount, found.unbondingEnds);
    }

    /// @notice Withdraw the caller's unbonded tokens once the delay is over.
    function withdraw(bytes32 datanetId) external nonReentrant returns (uint256 amount) {
        Bond storage found = _bonds[datanetId][msg.sender];
        amount = found.unbonding;
        if (amount == 0) revert NothingToWithdraw(datanetId, msg.sender);
        if (block.timestamp < found.unbondingEnds) revert StillUnbonding(found.unbondingEnds);
        found.unbonding = 0;
        totalBonded -= amount;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(datanetId, msg.sender, amount);
    }

    // ------------------------------------------------------------ validators

    /// @notice Flag `recordHash`, contributed by `contributor`, as malicious or duplicate
    ///         (the datanet's owner or a curator); `reviewHash` names the off-chain review.
    ///         Takes the datanet's `slashBps` of the contributor's bond to the treasury.
    function flag(bytes32 datanetId, bytes32 recordHash, address contributor, FlagKind kind, bytes32 reviewHash)
        external
        nonReentrant
        returns (uint256 penalty)
    {
        if (!datanets.isPublisher(datanetId, msg.sender)) revert NotValidator(datanetId, msg.sender);
        if (kind == FlagKind.None) revert InvalidFlagKind();
        if (reviewHash == bytes32(0)) revert ZeroReviewHash();
        if (contributor == address(0)) revert ZeroAddress();
        Flag storage entry = _flags[datanetId][recordHash];
        if (entry.kind != FlagKind.None) revert AlreadyFlagged(datanetId, recordHash);
        Bond storage found = _bonds[datanetId][contributor];
        penalty = (uint256(found.bonded) + found.unbonding) * _policies[datanetId].slashBps / BPS;
        _take(found, penalty);
        _flags[datanetId][recordHash] =
            Flag(contributor, kind, uint64(block.timestamp), msg.sender, uint128(penalty), reviewHash);
        totalBonded -= penalty;
        emit RecordFlagged(datanetId, recordHash, contributor, kind, reviewHash, msg.sender, penalty);
        if (penalty != 0) token.safeTransfer(treasury, penalty);
    }

    // ----------------------------------------------------------------- admin

    /// @notice Change where penalties go (admin only).
    function setTreasury(address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setTreasury(treasury_);
    }

    /// @notice Change the highest slash rate datanets may set from now on (admin only).
    function setMaxSlashBps(uint16 maxSlashBps_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMaxSlashBps(maxSlashBps_);
    }

    // ----------------------------------------------------------------- views

    /// @notice A datanet's policy (zero bond amount: none set).
    function policy(bytes32 datanetId) external view returns (Policy memory) {
        return _policies[datanetId];
    }

    /// @notice A contributor's bond in a datanet.
    function bondOf(bytes32 datanetId, address contributor) external view returns (Bond memory) {
        return _bonds[datanetId][contributor];
    }

    /// @notice Whether `contributor` holds at least the datanet's bond (true without a policy).
    function isBonded(bytes32 datanetId, address contributor) external view returns (bool) {
        return _bonds[datanetId][contributor].bonded >= _policies[datanetId].bondAmount;
    }

    /// @notice The flag of a record (kind `None`: not flagged).
    function getFlag(bytes32 datanetId, bytes32 recordHash) external view returns (Flag memory) {
        return _flags[datanetId][recordHash];
    }

    // -------------------------------------------------------------- internal

    /// @dev Takes from the bonded tokens first, then from unbonding ones.
    function _take(Bond storage found, uint256 amount) private {
        uint128 fromBonded = uint128(amount < found.bonded ? amount : found.bonded);
        found.bonded -= fromBonded;
        found.unbonding -= uint128(amount - fromBonded);
    }

    function _pull(address from, uint256 amount) private {
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(from, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert FundingShortfall(amount, received);
    }

    function _setTreasury(address treasury_) private {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }

    function _setMaxSlashBps(uint16 maxSlashBps_) private {
        if (maxSlashBps_ > BPS) revert SlashRateTooHigh(maxSlashBps_, BPS);
        maxSlashBps = maxSlashBps_;
        emit MaxSlashBpsChanged(maxSlashBps_);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {Votes} from "@openzeppelin/contracts/governance/utils/Votes.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Time} from "@openzeppelin/contracts/utils/types/Time.sol";

/// @title ContributionVotes
/// @notice Voting power earned by contribution: every attribution reward paid out adds its
///         amount to the claimant's votes. Votes cannot be bought or transferred, only
///         delegated, so moving OPEN moves no votes.
/// @dev An OpenZeppelin `Votes` (IERC5805) on a timestamp clock. Only `rewards`, the
///      `AttributionRewards` contract that created this one, mints voting units, when it pays
///      a claim. An account that never delegated votes with its own earnings (`delegates`
///      returns the account itself), so earned votes count without a separate transaction,
///      and delegating to the zero address is refused: every unit is always somebody's votes,
///      i.e. the sum of `getVotes` over all accounts equals `totalEarned()`, the sum of all
///      claimed rewards.
contract ContributionVotes is Votes {
    /// @notice The rewards contract whose paid claims earn votes.
    address public immutable rewards;

    mapping(address account => uint256) private _earned;

    event VotesEarned(address indexed account, uint256 amount);

    error NotRewards(address caller);
    error ZeroDelegatee();

    /// @param rewards_ The only address allowed to call `earn`.
    constructor(address rewards_) EIP712("OpenLedger ContributionVotes", "1") {
        rewards = rewards_;
    }

    /// @notice Add `amount` to what `account` has earned (rewards contract only).
    function earn(address account, uint256 amount) external {
        if (msg.sender != rewards) revert NotRewards(msg.sender);
        _earned[account] += amount;
        _transferVotingUnits(address(0), account, amount);
        emit VotesEarned(account, amount);
    }

    /// @notice Everything `account` has earned (its voting units, wherever delegated).
    function earned(address account) external view returns (uint256) {
        return _earned[account];
    }

    /// @notice Everything earned by everyone: the sum of claimed rewards.
    function totalEarned() external view returns (uint256) {
        return _getTotalSupply();
    }

    /// @notice Whom `account` delegates to: itself until it delegates elsewhere.
    /// @dev NOTE: a default instead of a delegation written on the first earning saves a
    ///      storage write (22k gas) on every first-time claim.
    function delegates(address account) public view override returns (address) {
        address delegatee = super.delegates(account);
        return delegatee == address(0) ? account : delegatee;
    }

    /// @notice Votes are counted by block timestamp (ERC-6372).
    function clock() public view override returns (uint48) {
        return Time.timestamp();
    }

    /// @notice ERC-6372 clock description.
    // solhint-disable-next-line func-name-mixedcase
    function CLOCK_MODE() public pure override returns (string memory) {
        return "mode=timestamp";
    }

    function _delegate(address account, address delegatee) internal override {
        if (delegatee == address(0)) revert ZeroDelegatee();
        super._delegate(account, delegatee);
    }

    function _getVotingUnits(address account) internal view override returns (uint256) {
        return _earned[account];
    }
}

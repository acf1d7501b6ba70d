// The Raft protocol, as this file implements it (one replica of one group)
// =========================================================================
//
// RaftNode is an I/O-free state machine in the etcd-raft style. The driver (RaftScheduler, or a test)
// calls Tick() at a fixed interval, Step(message) for every message that arrives, and Propose*() for
// new commands; none of these do I/O. The consequences come out of GetReady():
//
//   1. Ready.MessagesNow            may be sent at once (leader appends/heartbeats/snapshots, pre-votes,
//                                   TimeoutNow): they promise nothing about this server's durable state.
//   2. Ready.HardState, Snapshot,   must be made durable, in that order, in one atomic write
//      Entries                      (Entries replace any persisted entries from Entries[0].Index on). When only the
//                                   commit index changed (MustPersist false) the write need not be synced.
//   3. Ready.MessagesAfterPersist   only after (2) is durable: votes and every response (a vote or an
//                                   acknowledgement promises durable state — raft-pitfalls 1, 15).
//   4. Ready.CommittedEntries       apply in order, only after (2); they are durable here and committed.
//   5. Advance(ready)               tells the node all of that happened. Until then GetReady is empty,
//                                   but Step/Tick/Propose go on; what they produce goes into the next Ready.
//
// Guarantees (checked on every step by the seeded simulation in Canopy.Simulation):
// - Election safety: at most one leader per term. A vote is granted at most once per term and is durable
//   before the grant leaves (the candidate's own vote too: its Vote requests wait for persistence).
// - Log matching: an entry is identified by (index, term); a follower truncates only at a real conflict
//   (an incoming entry with a different term at the same index), never because of a stale message.
// - Leader completeness: votes go only to candidates whose log is at least as up to date (last term,
//   then last index). Leaders commit only entries of their own term by counting (Raft §5.4.2, figure 8);
//   earlier entries commit with them.
// - State-machine safety: only committed, locally durable entries are applied, in order, once.
// - The leader counts itself toward a quorum only for entries durable on its own disk.
//
// Elections: followers that hear nothing from a leader for a randomised election timeout in
// [ElectionTicks, 2*ElectionTicks) first run a pre-vote ("would you vote for me at term+1?") that
// raises no term, so a server that was cut off cannot depose a healthy leader when it returns.
// Check-quorum: a leader that has not heard from a quorum within an election timeout steps down, and
// voters that heard from a leader within the election timeout ignore vote requests (the leader lease),
// unless the request comes from a leadership transfer.
//
// Replication and flow control: per follower, Probe (one append per heartbeat until one matches),
// Replicate (stream, at most MaxInflight appends unacknowledged) or Snapshot (wait for the snapshot;
// retried after an election timeout). A follower too far behind the compacted log gets a snapshot of
// the state machine from ISnapshotSource. Snapshots older than the follower's commit index are ignored.
//
// Membership: one server at a time (voter or learner added, learner promoted, member removed). A change is
// proposed only after the leader has committed an entry of its own term and only when no other change is
// uncommitted. A configuration takes effect when appended (not when committed) and reverts if truncated.
// Learners receive the log but never campaign and are never counted; a replica asked for its vote grants it
// by the ordinary rules even if it believes itself a learner (it may not have seen its promotion yet; its
// vote is only counted by a candidate whose configuration makes it a voter). Uninitialised replicas (no
// configuration yet) never vote. A leader removed from the group keeps leading until the removal commits,
// then hands over with TimeoutNow to the most up-to-date voter and steps down.
//
// Leadership transfer: the leader stops taking proposals, brings the target's log up to date, sends
// TimeoutNow, and gives up (resuming proposals) if the transfer has not happened within an election timeout.
//
// Quiescence: an idle leader (everything committed, applied and acknowledged by every member) sends a
// quiescing heartbeat and stops ticking; followers whose log matches stop ticking too. Any message,
// proposal or Wake() restarts ticking. A quiesced follower woken by a message from anyone but its leader wakes the
// leader in turn (so a pre-vote cannot quietly run out a quiesced leader's lease). A quiesced follower whose leader
// dies must be woken by the driver's failure detector (raft-pitfalls 17).
//
// Failure cases: messages may be lost, duplicated, delayed and reordered; every handler tolerates stale
// input (lower terms are answered so a stale leader learns, stale responses cannot move Match back or the
// commit index down). A server may crash at any point and lose every write that was not yet durable.
// An invariant the node detects as broken (e.g. a conflict below the commit index) throws
// RaftInvariantException: that is a bug, never a recoverable condition.
namespace Canopy.Replication.Raft;

/// <summary>Thrown when the node detects a broken Raft invariant. Always a bug.</summary>
public sealed class RaftInvariantException(string message) : Exception(message);

/// <summary>Injected randomness (election timeouts). Seeded in simulation.</summary>
public interface IRandomSource
{
    /// <summary>A uniformly distributed integer in [0, maxExclusive).</summary>
    int Next(int maxExclusive);
}

/// <summary>A seeded <see cref="IRandomSource"/>.</summary>
public sealed class SeededRandom(int seed) : IRandomSource
{
    private readonly Random _random = new(seed);

    public int Next(int maxExclusive) => _random.Next(maxExclusive);
}

/// <summary>Produces a snapshot of the state machine for a follower that is too far behind.</summary>
public interface ISnapshotSource
{
    /// <summary>The state machine as of its applied index (at least the log's compaction point).</summary>
    (ulong Index, ReadOnlyMemory<byte> Data) Capture();
}

/// <summary>Tuning of one Raft group. Ticks are driven by the caller (e.g. every 50 ms).</summary>
public sealed record RaftConfig
{
    public required ulong Id { get; init; }

    public required ulong Group { get; init; }

    /// <summary>Election timeout in ticks; the randomised timeout is in [ElectionTicks, 2*ElectionTicks).</summary>
    public int ElectionTicks { get; init; } = 10;

    /// <summary>Leader heartbeat interval in ticks.</summary>
    public int HeartbeatTicks { get; init; } = 2;

    /// <summary>Appends in flight to one follower in Replicate state.</summary>
    public int MaxInflight { get; init; } = 256;

    /// <summary>Bytes of entries per append message.</summary>
    public long MaxMessageBytes { get; init; } = 1 << 20;

    /// <summary>Bytes of committed entries handed out per Ready.</summary>
    public long MaxApplyBytes { get; init; } = 4 << 20;

    public bool PreVote { get; init; } = true;

    public bool CheckQuorum { get; init; } = true;

    /// <summary>Quiesce after this many idle heartbeat rounds (0 disables quiescence).</summary>
    public int QuiesceAfterHeartbeats { get; init; } = 2;

    /// <summary>Planted bugs for mutation tests of the simulation. Never set outside tests.</summary>
    internal RaftBugs Bugs { get; init; } = RaftBugs.None;
}

/// <summary>
/// Switches that each break one rule of raft-pitfalls.md, so tests can check the simulation notices.
/// All false in production.
/// </summary>
internal sealed record RaftBugs
{
    public static readonly RaftBugs None = new();

    /// <summary>Rule 1: send votes and acknowledgements before the state they promise is durable.</summary>
    public bool AckBeforePersist { get; init; }

    /// <summary>Rule 2: commit entries of earlier terms by counting replicas.</summary>
    public bool CommitPriorTermByCount { get; init; }

    /// <summary>Rule 3: compare only log length when deciding a vote.</summary>
    public bool VoteComparesIndexOnly { get; init; }

    /// <summary>Rule 4: truncate after an append's entries even without a conflict.</summary>
    public bool TruncateOnStaleAppend { get; init; }

    /// <summary>Rule 10: pre-candidates raise their term (as if pre-vote were off).</summary>
    public bool PreVoteRaisesTerm { get; init; }

    /// <summary>Rule 11: a leader never checks that a quorum still hears it.</summary>
    public bool NoCheckQuorum { get; init; }

    /// <summary>Rule 16: heartbeats carry the leader's full commit index, not min(commit, match).</summary>
    public bool HeartbeatFullCommit { get; init; }

    /// <summary>Rule 8: learners counted toward the commit quorum.</summary>
    public bool CountLearners { get; init; }

    /// <summary>Rule 5: a stale response moves the follower's match index back.</summary>
    public bool MatchFollowsStaleResponse { get; init; }

    /// <summary>Rule 1: apply committed entries before they are durable locally... and count self before durable.</summary>
    public bool LeaderCountsUnsynced { get; init; }

    public bool Any => this != None;
}

/// <summary>Outcome of a proposal.</summary>
public enum ProposeStatus : byte
{
    Ok,

    /// <summary>Not the leader; <see cref="ProposeResult.LeaderHint"/> names the leader if known.</summary>
    NotLeader,

    /// <summary>A leadership transfer is in progress; retry shortly (or at the new leader).</summary>
    TransferInProgress,

    /// <summary>A configuration change was refused (another is pending, or the leader is too new, or it is invalid).</summary>
    ConfChangeRejected,
}

/// <summary>Result of <see cref="RaftNode.Propose"/>: on success, the index and term the entry got.</summary>
public readonly record struct ProposeResult(ProposeStatus Status, ulong Index, ulong Term, ulong LeaderHint, string? Reason = null)
{
    public bool Ok => Status == ProposeStatus.Ok;
}

/// <summary>A single-server membership change.</summary>
public enum ConfChangeType : byte
{
    AddLearner,
    AddVoter,
    PromoteLearner,
    Remove,
}

/// <summary>What the driver must persist, send and apply; see the protocol at the top of RaftNode.cs.</summary>
public sealed class Ready
{
    /// <summary>Non-null if term, vote or commit changed since the last Ready.</summary>
    public HardState? HardState { get; init; }

    /// <summary>A snapshot from the leader to install (replaces the state machine and the log).</summary>
    public Snapshot? Snapshot { get; init; }

    /// <summary>Entries to make durable; they replace persisted entries from Entries[0].Index on.</summary>
    public Entry[] Entries { get; init; } = [];

    /// <summary>Committed, locally durable entries to apply in order after persistence.</summary>
    public Entry[] CommittedEntries { get; init; } = [];

    /// <summary>Messages that may leave before the writes above are durable.</summary>
    public List<Message> MessagesNow { get; init; } = [];

    /// <summary>Messages that may leave only after the writes above are durable.</summary>
    public List<Message> MessagesAfterPersist { get; init; } = [];

    public RaftRole Role { get; init; }

    public ulong Leader { get; init; }

    public ulong Term { get; init; }

    /// <summary>
    /// True if something must be written and synced before the after-persist messages go: entries, a snapshot, or a
    /// new term or vote. A change of the commit index alone need not be durable (a restarted replica relearns it
    /// from the leader); the driver may write it without a sync, before the entries it lets apply.
    /// </summary>
    public bool MustPersist { get; init; }
}

/// <summary>One replica of one Raft group. Not thread-safe: the driver serialises all calls.</summary>
public sealed class RaftNode
{
    private readonly RaftConfig _cfg;
    private readonly RaftBugs _bugs;
    private readonly IRandomSource _random;
    private readonly ISnapshotSource? _snapshots;
    private readonly RaftLog _log;
    private readonly Dictionary<ulong, Progress> _progress = [];
    private readonly Dictionary<ulong, bool> _votes = [];
    private List<Message> _msgsNow = [];
    private List<Message> _msgsAfter = [];

    private int _electionElapsed;
    private int _heartbeatElapsed;
    private int _randomizedElectionTimeout;
    private ulong _leadTransferee;
    private ulong _termStartIndex;
    private bool _broadcastPending;
    private int _idleHeartbeats;
    private HardState _lastHardState;
    private bool _readyInFlight;

    /// <summary>Creates a replica from what its storage holds (all empty for a new, uninitialised replica).</summary>
    /// <param name="config">Identity and tuning.</param>
    /// <param name="hardState">Persisted term, vote and commit.</param>
    /// <param name="snapshot">Persisted compaction point / installed snapshot (index, term, membership).</param>
    /// <param name="entries">Persisted entries after the snapshot, contiguous.</param>
    /// <param name="applied">The state machine's applied index.</param>
    /// <param name="random">Election-timeout randomness.</param>
    /// <param name="snapshots">Snapshot source for lagging followers (null: never sends snapshots).</param>
    public RaftNode(RaftConfig config, HardState hardState, SnapshotMeta snapshot, IReadOnlyList<Entry> entries, ulong applied, IRandomSource random, ISnapshotSource? snapshots)
    {
        if (config.Id == 0)
        {
            throw new ArgumentException("replica id 0 is reserved", nameof(config));
        }

        _cfg = config;
        _bugs = config.Bugs;
        _random = random;
        _snapshots = snapshots;
        _log = new RaftLog(snapshot, entries, hardState.Commit, applied);
        Term = hardState.Term;
        Vote = hardState.Vote;
        _lastHardState = new HardState(Term, Vote, _log.Committed);
        BecomeFollower(Term, 0);
    }

    public ulong Id => _cfg.Id;

    public ulong Group => _cfg.Group;

    public RaftRole Role { get; private set; }

    public ulong Term { get; private set; }

    public ulong Vote { get; private set; }

    /// <summary>The leader this replica follows in its term, or 0.</summary>
    public ulong Leader { get; private set; }

    public bool IsQuiesced { get; private set; }

    public ulong Committed => _log.Committed;

    public ulong Applied => _log.Applied;

    public ulong LastIndex => _log.LastIndex;

    public ulong LastTerm => _log.LastTerm;

    public ulong FirstIndex => _log.FirstIndex;

    /// <summary>Last index durable on this server.</summary>
    public ulong StableIndex => _log.Stable;

    public ConfState Conf => _log.Conf;

    public SnapshotMeta CompactedTo => _log.Snapshot;

    /// <summary>The transfer target while a leadership transfer is in progress, else 0.</summary>
    public ulong LeadTransferee => _leadTransferee;

    /// <summary>Has a configuration (received a snapshot or was bootstrapped).</summary>
    public bool IsInitialized => !_log.Conf.IsEmpty;

    /// <summary>
    /// May campaign: a voter in its latest configuration, or — while a later configuration that removes it is not
    /// committed — in the committed one. (Otherwise a server holding the most up-to-date log with an uncommitted
    /// removal of itself would neither campaign nor vote for anyone less up to date: the group would be stuck.
    /// Its votes are still tallied by its latest configuration, as Raft requires.)
    /// </summary>
    public bool IsPromotable => _log.Conf.IsVoter(Id) || (_log.LastConfIndex > _log.Committed && _log.ConfAt(_log.Committed).IsVoter(Id));

    /// <summary>Term of the entry at <paramref name="index"/> (0 past the end, null if compacted).</summary>
    public ulong? TermAt(ulong index) => _log.Term(index);

    /// <summary>The entry at <paramref name="index"/> if it is in the in-memory log.</summary>
    public Entry? EntryAt(ulong index) => index >= _log.FirstIndex && index <= _log.LastIndex ? _log.EntryAt(index) : null;

    /// <summary>The leader's view of a follower: (match, next), or null.</summary>
    public (ulong Match, ulong Next)? ProgressOf(ulong id) =>
        Role == RaftRole.Leader && _progress.TryGetValue(id, out var pr) ? (pr.Match, pr.Next) : null;

    // ---------------------------------------------------------------- driver entry points

    /// <summary>Advances logical time by one tick.</summary>
    public void Tick()
    {
        if (IsQuiesced)
        {
            return;
        }

        if (Role == RaftRole.Leader)
        {
            TickLeader();
        }
        else
        {
            TickElection();
        }
    }

    /// <summary>Restarts ticking after quiescence (the driver suspects the leader is gone).</summary>
    public void Wake()
    {
        if (!IsQuiesced)
        {
            return;
        }

        IsQuiesced = false;
        _idleHeartbeats = 0;
        if (Role == RaftRole.Leader)
        {
            _electionElapsed = 0;
            _heartbeatElapsed = 0;
            foreach (var pr in _progress.Values)
            {
                pr.RecentActive = true;
            }
        }
    }

    /// <summary>Starts an election now (skipping the timeout). Pre-vote still applies.</summary>
    public void Campaign()
    {
        Wake();
        if (Role != RaftRole.Leader)
        {
            StartCampaign(_cfg.PreVote, transfer: false);
        }
    }

    /// <summary>Appends a command at the leader.</summary>
    public ProposeResult Propose(ReadOnlyMemory<byte> data)
    {
        var refusal = RefuseProposal();
        if (refusal is { } r)
        {
            return r;
        }

        Wake();
        var e = new Entry(_log.LastIndex + 1, Term, EntryType.Normal, data);
        AppendAsLeader(e);
        return new ProposeResult(ProposeStatus.Ok, e.Index, e.Term, Id);
    }

    /// <summary>Proposes a single-server membership change (raft-pitfalls 8).</summary>
    public ProposeResult ProposeConfChange(ConfChangeType type, ulong member)
    {
        var refusal = RefuseProposal();
        if (refusal is { } r)
        {
            return r;
        }

        if (_log.Committed < _termStartIndex)
        {
            return Rejected("the leader has not yet committed an entry of its term");
        }

        if (_log.LastConfIndex > _log.Committed)
        {
            return Rejected("another configuration change is not yet committed");
        }

        var conf = _log.Conf;
        ConfState next;
        switch (type)
        {
            case ConfChangeType.AddLearner when !conf.Contains(member):
                next = new ConfState(conf.Voters, conf.Learners.Append(member));
                break;
            case ConfChangeType.AddVoter when !conf.IsVoter(member):
            case ConfChangeType.PromoteLearner when conf.IsLearner(member):
                next = new ConfState(conf.Voters.Append(member), conf.Learners.Where(l => l != member));
                break;
            case ConfChangeType.Remove when conf.Contains(member):
                next = new ConfState(conf.Voters.Where(v => v != member), conf.Learners.Where(l => l != member));
                break;
            default:
                return Rejected($"{type} of {member} does not apply to {conf}");
        }

        if (next.Voters.Length == 0)
        {
            return Rejected("a group needs at least one voter");
        }

        Wake();
        var e = new Entry(_log.LastIndex + 1, Term, EntryType.ConfChange, next.Encode());
        AppendAsLeader(e);
        return new ProposeResult(ProposeStatus.Ok, e.Index, e.Term, Id);
    }

    /// <summary>Starts handing leadership to <paramref name="target"/>. Returns false if not possible.</summary>
    public bool TransferLeadership(ulong target)
    {
        if (Role != RaftRole.Leader || target == Id || !_log.Conf.IsVoter(target) || !_progress.TryGetValue(target, out var pr))
        {
            return false;
        }

        if (_leadTransferee == target)
        {
            return true;
        }

        Wake();
        _leadTransferee = target;
        _electionElapsed = 0;
        if (pr.Match == _log.LastIndex)
        {
            Send(NewMessage(MessageType.TimeoutNow, target), now: true);
        }
        else
        {
            SendAppend(target, sendIfEmpty: true);
        }

        return true;
    }

    /// <summary>The driver could not deliver to <paramref name="peer"/>: stop streaming to it optimistically.</summary>
    public void ReportUnreachable(ulong peer)
    {
        if (Role == RaftRole.Leader && _progress.TryGetValue(peer, out var pr) && pr.State == ProgressState.Replicate)
        {
            pr.BecomeProbe();
        }
    }

    /// <summary>
    /// Drops log entries at or below <paramref name="index"/> (must be applied, durable, and its applied
    /// state durable too). Returns the new compaction point, which the driver persists with the deletion.
    /// </summary>
    public SnapshotMeta Compact(ulong index)
    {
        _log.Compact(Math.Min(index, Math.Min(_log.Applied, _log.Stable)));
        return _log.Snapshot;
    }

    /// <summary>Handles one message from a peer.</summary>
    public void Step(Message m)
    {
        if (m.Group != Group || m.To != Id)
        {
            return;
        }

        // A quiescing heartbeat and the answers to it must not wake the group again.
        var quiet = (m.Type == MessageType.Heartbeat && (m.Flags & MessageFlags.Quiesce) != 0) || m.Type == MessageType.HeartbeatResp;
        if (!quiet)
        {
            // A quiesced follower woken by someone other than its leader (a pre-vote, say) wakes the leader too:
            // otherwise its election clock runs while the leader stays silent, and it deposes a healthy leader.
            var wakeLeader = IsQuiesced && Role == RaftRole.Follower && Leader != 0 && m.From != Leader;
            Wake();
            if (wakeLeader)
            {
                // Acknowledges what it holds (it matched the leader's log when it quiesced); not a quiet message.
                Send(NewMessage(MessageType.AppendResp, Leader) with { Index = _log.LastIndex }, now: false);
            }
        }

        if (m.Term > Term)
        {
            if (m.Type is MessageType.Vote or MessageType.PreVote)
            {
                var transfer = (m.Flags & MessageFlags.Transfer) != 0;
                var inLease = _cfg.CheckQuorum && Leader != 0 && _electionElapsed < _cfg.ElectionTicks;
                if (!transfer && inLease)
                {
                    // We heard from a live leader recently: this candidate cannot win without deposing it.
                    return;
                }
            }

            if (m.Type == MessageType.PreVote || (m.Type == MessageType.PreVoteResp && !m.Reject))
            {
                // Pre-votes are for a future term: they change no term.
            }
            else if (m.Type is MessageType.Append or MessageType.Heartbeat or MessageType.InstallSnapshot)
            {
                BecomeFollower(m.Term, m.From);
            }
            else
            {
                BecomeFollower(m.Term, 0);
            }
        }
        else if (m.Term < Term)
        {
            if ((_cfg.CheckQuorum || _cfg.PreVote) && m.Type is MessageType.Append or MessageType.Heartbeat)
            {
                // A stale leader: tell it our term so it steps down.
                Send(NewMessage(MessageType.AppendResp, m.From), now: false);
            }
            else if (m.Type == MessageType.PreVote)
            {
                Send(NewMessage(MessageType.PreVoteResp, m.From) with { Reject = true }, now: false);
            }

            return;
        }

        switch (m.Type)
        {
            case MessageType.Vote:
            case MessageType.PreVote:
                HandleVoteRequest(m);
                return;
        }

        switch (Role)
        {
            case RaftRole.Leader:
                StepLeader(m);
                break;
            case RaftRole.Candidate:
            case RaftRole.PreCandidate:
                StepCandidate(m);
                break;
            default:
                StepFollower(m);
                break;
        }
    }

    /// <summary>True if <see cref="GetReady"/> would return something to do.</summary>
    public bool HasReady()
    {
        if (_readyInFlight)
        {
            return false;
        }

        if (_broadcastPending || _msgsNow.Count > 0 || _msgsAfter.Count > 0)
        {
            return true;
        }

        if (_log.PendingSnapshot is not null || _log.Stable < _log.LastIndex)
        {
            return true;
        }

        if (CurrentHardState() != _lastHardState)
        {
            return true;
        }

        return Math.Min(_log.Committed, _log.Stable) > _log.Applied;
    }

    /// <summary>Takes the pending work; see the protocol at the top of this file. Call Advance when done.</summary>
    public Ready GetReady()
    {
        if (_readyInFlight)
        {
            throw new InvalidOperationException("raft: GetReady before Advance");
        }

        if (_broadcastPending)
        {
            _broadcastPending = false;
            if (Role == RaftRole.Leader)
            {
                BroadcastAppend();
            }
        }

        var hs = CurrentHardState();
        var snapshot = _log.PendingSnapshot;
        var entries = _log.UnstableEntries();
        var rd = new Ready
        {
            HardState = hs != _lastHardState ? hs : null,
            MustPersist = snapshot is not null || entries.Length > 0 || hs.Term != _lastHardState.Term || hs.Vote != _lastHardState.Vote,
            Snapshot = snapshot,
            Entries = entries,
            CommittedEntries = _log.NextCommitted(_cfg.MaxApplyBytes),
            MessagesNow = _msgsNow,
            MessagesAfterPersist = _msgsAfter,
            Role = Role,
            Leader = Leader,
            Term = Term,
        };
        _msgsNow = [];
        _msgsAfter = [];
        _lastHardState = hs;
        _readyInFlight = true;
        return rd;
    }

    /// <summary>Everything in <paramref name="rd"/> was persisted, sent and applied.</summary>
    public void Advance(Ready rd)
    {
        _readyInFlight = false;
        if (rd.Snapshot is { } snap)
        {
            _log.SnapshotPersisted(snap.Meta.Index);
        }

        if (rd.Entries.Length > 0)
        {
            var last = rd.Entries[^1];
            _log.StableTo(last.Index, last.Term);
        }

        if (rd.CommittedEntries.Length > 0)
        {
            _log.AppliedTo(rd.CommittedEntries[^1].Index);
        }

        if (Role == RaftRole.Leader && MaybeCommit())
        {
            _broadcastPending = true;
        }

        MaybeStepDownAfterRemoval();
    }

    // ---------------------------------------------------------------- roles

    private void BecomeFollower(ulong term, ulong leader)
    {
        Reset(term);
        Role = RaftRole.Follower;
        Leader = leader;
    }

    private void Reset(ulong term)
    {
        if (Term != term)
        {
            Term = term;
            Vote = 0;
        }

        Leader = 0;
        _electionElapsed = 0;
        _heartbeatElapsed = 0;
        _randomizedElectionTimeout = _cfg.ElectionTicks + _random.Next(_cfg.ElectionTicks);
        _leadTransferee = 0;
        _votes.Clear();
        _progress.Clear();
        _idleHeartbeats = 0;
    }

    private void BecomeLeader()
    {
        Reset(Term);
        Role = RaftRole.Leader;
        Leader = Id;
        foreach (var id in _log.Conf.All)
        {
            if (id != Id)
            {
                _progress[id] = new Progress(_log.LastIndex + 1, _cfg.MaxInflight) { RecentActive = true };
            }
        }

        // A no-op of our term: committing it commits everything before it (figure 8).
        var e = new Entry(_log.LastIndex + 1, Term, EntryType.Normal, ReadOnlyMemory<byte>.Empty);
        _termStartIndex = e.Index;
        AppendAsLeader(e);
    }

    private void StartCampaign(bool preVote, bool transfer)
    {
        if (!IsPromotable)
        {
            return;
        }

        ulong voteTerm;
        MessageType type;
        if (preVote && !_bugs.PreVoteRaisesTerm)
        {
            Role = RaftRole.PreCandidate;
            Leader = 0;
            _votes.Clear();
            _randomizedElectionTimeout = _cfg.ElectionTicks + _random.Next(_cfg.ElectionTicks);
            voteTerm = Term + 1;
            type = MessageType.PreVote;
        }
        else
        {
            Reset(Term + 1);
            Role = RaftRole.Candidate;
            Vote = Id;
            voteTerm = Term;
            type = MessageType.Vote;
        }

        if (Poll(Id, granted: true) == VoteResult.Won)
        {
            if (type == MessageType.PreVote)
            {
                StartCampaign(preVote: false, transfer);
            }
            else
            {
                BecomeLeader();
            }

            return;
        }

        foreach (var v in _log.Conf.Voters)
        {
            if (v == Id)
            {
                continue;
            }

            var m = new Message
            {
                Type = type,
                Group = Group,
                From = Id,
                To = v,
                Term = voteTerm,
                LogTerm = _log.LastTerm,
                Index = _log.LastIndex,
                Flags = transfer ? MessageFlags.Transfer : MessageFlags.None,
            };

            // A real vote request promises our own durable vote; a pre-vote promises nothing.
            Send(m, now: type == MessageType.PreVote);
        }
    }

    private enum VoteResult
    {
        Pending,
        Won,
        Lost,
    }

    private VoteResult Poll(ulong from, bool granted)
    {
        _votes.TryAdd(from, granted);
        var voters = _log.Conf.Voters;
        int yes = 0, no = 0;
        foreach (var v in voters)
        {
            if (_votes.TryGetValue(v, out var g))
            {
                if (g)
                {
                    yes++;
                }
                else
                {
                    no++;
                }
            }
        }

        var quorum = (voters.Length / 2) + 1;
        if (yes >= quorum)
        {
            return VoteResult.Won;
        }

        return no > voters.Length - quorum ? VoteResult.Lost : VoteResult.Pending;
    }

    // ---------------------------------------------------------------- ticks

    private void TickElection()
    {
        _electionElapsed++;
        if (IsPromotable && _electionElapsed >= _randomizedElectionTimeout)
        {
            _electionElapsed = 0;
            StartCampaign(_cfg.PreVote, transfer: false);
        }
    }

    private void TickLeader()
    {
        _heartbeatElapsed++;
        _electionElapsed++;
        if (_electionElapsed >= _cfg.ElectionTicks)
        {
            _electionElapsed = 0;
            if (_cfg.CheckQuorum && !_bugs.NoCheckQuorum && !QuorumActive())
            {
                BecomeFollower(Term, 0);
                return;
            }

            foreach (var pr in _progress.Values)
            {
                pr.RecentActive = false;
                if (pr.State == ProgressState.Snapshot)
                {
                    // The snapshot or its answer was lost: probe again.
                    pr.BecomeProbe();
                }
            }

            _leadTransferee = 0;
        }

        if (_heartbeatElapsed >= _cfg.HeartbeatTicks)
        {
            _heartbeatElapsed = 0;
            var quiesce = ShouldQuiesce();
            BroadcastHeartbeat(quiesce);
            if (quiesce)
            {
                IsQuiesced = true;
            }
        }
    }

    private bool QuorumActive()
    {
        var voters = _log.Conf.Voters;
        var active = 0;
        foreach (var v in voters)
        {
            if (v == Id || (_progress.TryGetValue(v, out var pr) && pr.RecentActive))
            {
                active++;
            }
        }

        return active >= (voters.Length / 2) + 1;
    }

    private bool ShouldQuiesce()
    {
        if (_cfg.QuiesceAfterHeartbeats <= 0 || _leadTransferee != 0 || _readyInFlight || _broadcastPending)
        {
            _idleHeartbeats = 0;
            return false;
        }

        var idle = _log.Committed == _log.LastIndex && _log.Stable == _log.LastIndex && _log.Applied == _log.Committed;
        if (idle)
        {
            foreach (var pr in _progress.Values)
            {
                if (pr.Match != _log.LastIndex || pr.CommitSent < _log.Committed)
                {
                    idle = false;
                    break;
                }
            }
        }

        _idleHeartbeats = idle ? _idleHeartbeats + 1 : 0;
        return _idleHeartbeats > _cfg.QuiesceAfterHeartbeats;
    }

    // ---------------------------------------------------------------- leader

    private ProposeResult? RefuseProposal()
    {
        if (Role != RaftRole.Leader)
        {
            return new ProposeResult(ProposeStatus.NotLeader, 0, Term, Leader);
        }

        if (_leadTransferee != 0)
        {
            return new ProposeResult(ProposeStatus.TransferInProgress, 0, Term, _leadTransferee);
        }

        return null;
    }

    private ProposeResult Rejected(string reason) => new(ProposeStatus.ConfChangeRejected, 0, Term, Id, reason);

    private void AppendAsLeader(Entry e)
    {
        var before = _log.Conf;
        _log.Append(e);
        if (e.Type == EntryType.ConfChange)
        {
            OnConfChanged(before);
        }

        if (_bugs.LeaderCountsUnsynced)
        {
            _log.StableTo(e.Index, e.Term);
        }

        // Sent with the next Ready, so proposals arriving together share one append per follower.
        _broadcastPending = true;
        MaybeCommit();
    }

    private void OnConfChanged(ConfState before)
    {
        if (Role != RaftRole.Leader)
        {
            return;
        }

        var conf = _log.Conf;
        foreach (var id in conf.All)
        {
            if (id != Id && !_progress.ContainsKey(id))
            {
                _progress[id] = new Progress(_log.LastIndex, _cfg.MaxInflight) { RecentActive = true };
            }
        }

        foreach (var id in before.All)
        {
            if (!conf.Contains(id))
            {
                _progress.Remove(id);
                if (_leadTransferee == id)
                {
                    _leadTransferee = 0;
                }
            }
        }
    }

    private void StepLeader(Message m)
    {
        if (!_progress.TryGetValue(m.From, out var pr))
        {
            if (m.Type is MessageType.Append or MessageType.Heartbeat or MessageType.InstallSnapshot)
            {
                throw new RaftInvariantException($"raft g{Group}: two leaders in term {Term}: {Id} and {m.From}");
            }

            return;
        }

        switch (m.Type)
        {
            case MessageType.AppendResp:
                pr.RecentActive = true;
                if (m.Reject)
                {
                    var hint = m.LogTerm > 0 ? _log.FindConflictByTerm(m.RejectHint, m.LogTerm) : m.RejectHint;
                    if (pr.MaybeDecrTo(m.Index, hint))
                    {
                        if (pr.State == ProgressState.Replicate)
                        {
                            pr.BecomeProbe();
                        }

                        SendAppend(m.From, sendIfEmpty: true);
                    }
                }
                else
                {
                    var wasPaused = pr.IsPaused;
                    if (_bugs.MatchFollowsStaleResponse && m.Index < pr.Match)
                    {
                        pr.Match = m.Index;
                    }

                    if (pr.MaybeUpdate(m.Index))
                    {
                        if (pr.State == ProgressState.Probe)
                        {
                            pr.BecomeReplicate();
                        }
                        else if (pr.State == ProgressState.Snapshot && pr.Match >= pr.PendingSnapshot)
                        {
                            pr.BecomeProbe();
                            pr.BecomeReplicate();
                        }
                        else if (pr.State == ProgressState.Replicate)
                        {
                            pr.Inflights.FreeLE(m.Index);
                        }

                        if (MaybeCommit())
                        {
                            BroadcastAppend();
                            MaybeStepDownAfterRemoval();
                            if (Role != RaftRole.Leader)
                            {
                                return;
                            }
                        }
                        else if (wasPaused)
                        {
                            SendAppend(m.From, sendIfEmpty: false);
                        }

                        while (SendAppend(m.From, sendIfEmpty: false))
                        {
                        }

                        if (m.From == _leadTransferee && pr.Match == _log.LastIndex)
                        {
                            Send(NewMessage(MessageType.TimeoutNow, m.From), now: true);
                        }
                    }
                }

                break;

            case MessageType.HeartbeatResp:
                pr.RecentActive = true;
                pr.ProbeSent = false;
                if (pr.State == ProgressState.Replicate && pr.Inflights.Full)
                {
                    pr.Inflights.Reset();
                }

                if (pr.Match < _log.LastIndex)
                {
                    Wake();
                    SendAppend(m.From, sendIfEmpty: true);
                }

                break;

            case MessageType.Append:
            case MessageType.Heartbeat:
            case MessageType.InstallSnapshot:
                throw new RaftInvariantException($"raft g{Group}: two leaders in term {Term}: {Id} and {m.From}");
        }
    }

    /// <summary>Advances the commit index to what a quorum holds, for entries of this term only.</summary>
    private bool MaybeCommit()
    {
        var conf = _log.Conf;
        var members = _bugs.CountLearners ? conf.All.ToArray() : conf.Voters;
        if (members.Length == 0)
        {
            return false;
        }

        Span<ulong> matches = stackalloc ulong[members.Length];
        for (var i = 0; i < members.Length; i++)
        {
            matches[i] = members[i] == Id ? _log.Stable : (_progress.TryGetValue(members[i], out var pr) ? pr.Match : 0);
        }

        matches.Sort();
        matches.Reverse();
        var candidate = matches[members.Length / 2];
        if (candidate > _log.Committed && (_log.Term(candidate) == Term || _bugs.CommitPriorTermByCount))
        {
            _log.CommitTo(candidate);
            return true;
        }

        return false;
    }

    private void MaybeStepDownAfterRemoval()
    {
        if (Role != RaftRole.Leader || _log.Conf.IsVoter(Id) || _log.Committed < _log.LastConfIndex)
        {
            return;
        }

        // Our removal is committed: hand over to the most up-to-date voter, then step down.
        ulong best = 0, bestMatch = 0;
        foreach (var v in _log.Conf.Voters)
        {
            if (_progress.TryGetValue(v, out var pr) && pr.Match >= bestMatch)
            {
                best = v;
                bestMatch = pr.Match;
            }
        }

        if (best != 0 && bestMatch == _log.LastIndex)
        {
            Send(NewMessage(MessageType.TimeoutNow, best), now: true);
        }

        BecomeFollower(Term, 0);
    }

    private void BroadcastAppend()
    {
        foreach (var id in _log.Conf.All)
        {
            if (id != Id)
            {
                SendAppend(id, sendIfEmpty: true);
            }
        }
    }

    private void BroadcastHeartbeat(bool quiesce)
    {
        foreach (var id in _log.Conf.All)
        {
            if (id == Id || !_progress.TryGetValue(id, out var pr))
            {
                continue;
            }

            var commit = _bugs.HeartbeatFullCommit ? _log.Committed : Math.Min(pr.Match, _log.Committed);
            pr.CommitSent = Math.Max(pr.CommitSent, commit);
            Send(
                NewMessage(MessageType.Heartbeat, id) with
                {
                    Commit = commit,
                    Index = _log.LastIndex,
                    LogTerm = _log.LastTerm,
                    Flags = quiesce ? MessageFlags.Quiesce : MessageFlags.None,
                },
                now: true);
        }
    }

    /// <summary>Sends the next append (or snapshot) to <paramref name="to"/>; false if nothing was sent.</summary>
    private bool SendAppend(ulong to, bool sendIfEmpty)
    {
        if (!_progress.TryGetValue(to, out var pr) || pr.IsPaused)
        {
            return false;
        }

        var prevIndex = pr.Next - 1;
        var prevTerm = _log.Term(prevIndex);
        if (prevTerm is null || pr.Next < _log.FirstIndex)
        {
            return SendSnapshot(to, pr);
        }

        var entries = pr.Next <= _log.LastIndex ? _log.Slice(pr.Next, _log.LastIndex + 1, _cfg.MaxMessageBytes) : [];
        if (entries.Length == 0 && !sendIfEmpty)
        {
            return false;
        }

        var commit = _log.Committed;
        Send(
            NewMessage(MessageType.Append, to) with
            {
                Index = prevIndex,
                LogTerm = prevTerm.Value,
                Entries = entries,
                Commit = commit,
            },
            now: true);
        pr.CommitSent = Math.Max(pr.CommitSent, Math.Min(commit, prevIndex + (ulong)entries.Length));
        pr.SentEntries(entries.Length > 0 ? entries[^1].Index : prevIndex, entries.Length);
        return true;
    }

    private bool SendSnapshot(ulong to, Progress pr)
    {
        if (!pr.RecentActive || _snapshots is null)
        {
            return false;
        }

        var (index, data) = _snapshots.Capture();
        if (index < _log.Snapshot.Index || index > _log.LastIndex || _log.Term(index) is not { } term)
        {
            throw new RaftInvariantException($"raft g{Group}: snapshot source returned index {index} outside [{_log.Snapshot.Index}, {_log.LastIndex}]");
        }

        var snap = new Snapshot(new SnapshotMeta(index, term, _log.ConfAt(index)), data);
        Send(NewMessage(MessageType.InstallSnapshot, to) with { Snapshot = snap }, now: true);
        pr.BecomeSnapshot(index);
        return true;
    }

    // ---------------------------------------------------------------- candidate and follower

    private void StepCandidate(Message m)
    {
        switch (m.Type)
        {
            case MessageType.Append:
            case MessageType.Heartbeat:
            case MessageType.InstallSnapshot:
                // A leader exists in our term.
                BecomeFollower(Term, m.From);
                StepFollower(m);
                return;

            case MessageType.PreVoteResp when Role == RaftRole.PreCandidate:
            case MessageType.VoteResp when Role == RaftRole.Candidate:
                if (m.Type == MessageType.PreVoteResp && !m.Reject && m.Term != Term + 1)
                {
                    return; // a grant from an older pre-campaign
                }

                switch (Poll(m.From, !m.Reject))
                {
                    case VoteResult.Won when Role == RaftRole.PreCandidate:
                        StartCampaign(preVote: false, transfer: false);
                        break;
                    case VoteResult.Won:
                        BecomeLeader();
                        break;
                    case VoteResult.Lost:
                        BecomeFollower(Term, 0);
                        break;
                }

                return;
        }
    }

    private void StepFollower(Message m)
    {
        switch (m.Type)
        {
            case MessageType.Append:
                _electionElapsed = 0;
                Leader = m.From;
                HandleAppend(m);
                break;

            case MessageType.Heartbeat:
                _electionElapsed = 0;
                Leader = m.From;
                HandleHeartbeat(m);
                break;

            case MessageType.InstallSnapshot:
                _electionElapsed = 0;
                Leader = m.From;
                HandleSnapshot(m);
                break;

            case MessageType.TimeoutNow:
                if (IsPromotable)
                {
                    StartCampaign(preVote: false, transfer: true);
                }

                break;
        }
    }

    private void HandleVoteRequest(Message m)
    {
        var canVote = Vote == m.From
            || (Vote == 0 && Leader == 0)
            || (m.Type == MessageType.PreVote && m.Term > Term);
        var upToDate = _log.IsUpToDate(m.Index, m.LogTerm, _bugs.VoteComparesIndexOnly);
        var respType = m.Type == MessageType.Vote ? MessageType.VoteResp : MessageType.PreVoteResp;
        if (canVote && upToDate && IsInitialized)
        {
            Send(NewMessage(respType, m.From) with { Term = m.Term }, now: respType == MessageType.PreVoteResp);
            if (m.Type == MessageType.Vote)
            {
                _electionElapsed = 0;
                Vote = m.From;
            }
        }
        else
        {
            Send(NewMessage(respType, m.From) with { Reject = true }, now: respType == MessageType.PreVoteResp);
        }
    }

    private void HandleAppend(Message m)
    {
        if (m.Index < _log.Committed)
        {
            Send(NewMessage(MessageType.AppendResp, m.From) with { Index = _log.Committed }, now: false);
            return;
        }

        var last = _log.MaybeAppend(m.Index, m.LogTerm, m.Commit, m.Entries, _bugs.TruncateOnStaleAppend, out var violation);
        if (violation is not null)
        {
            throw new RaftInvariantException($"raft g{Group} replica {Id}: {violation}");
        }

        if (last is { } lastNew)
        {
            Send(NewMessage(MessageType.AppendResp, m.From) with { Index = lastNew }, now: false);
            return;
        }

        var hintIndex = _log.FindConflictByTerm(Math.Min(m.Index, _log.LastIndex), m.LogTerm);
        Send(
            NewMessage(MessageType.AppendResp, m.From) with
            {
                Index = m.Index,
                Reject = true,
                RejectHint = hintIndex,
                LogTerm = _log.Term(hintIndex) ?? 0,
            },
            now: false);
    }

    private void HandleHeartbeat(Message m)
    {
        _log.CommitTo(Math.Min(m.Commit, _log.LastIndex));
        Send(NewMessage(MessageType.HeartbeatResp, m.From), now: false);
        if ((m.Flags & MessageFlags.Quiesce) != 0
            && m.Index == _log.LastIndex
            && _log.MatchTerm(m.Index, m.LogTerm)
            && _log.Committed == m.Commit)
        {
            IsQuiesced = true;
        }
    }

    private void HandleSnapshot(Message m)
    {
        if (m.Snapshot is not { } snap)
        {
            return;
        }

        if (_log.Restore(snap))
        {
            Send(NewMessage(MessageType.AppendResp, m.From) with { Index = _log.LastIndex }, now: false);
        }
        else
        {
            Send(NewMessage(MessageType.AppendResp, m.From) with { Index = _log.Committed }, now: false);
        }
    }

    // ---------------------------------------------------------------- messages

    private Message NewMessage(MessageType type, ulong to) => new()
    {
        Type = type,
        Group = Group,
        From = Id,
        To = to,
        Term = Term,
    };

    private void Send(Message m, bool now)
    {
        if (now || _bugs.AckBeforePersist)
        {
            _msgsNow.Add(m);
        }
        else
        {
            _msgsAfter.Add(m);
        }
    }

    private HardState CurrentHardState() => new(Term, Vote, _log.Committed);
}

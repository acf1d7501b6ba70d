// The per-server scheduler (multi-raft)
// =====================================
//
// One RaftScheduler per server drives every Raft group (range replica) on that server. It is deterministic and
// single-threaded: the driver (RaftHost with real threads, sockets and RocksDB; or the simulation) serialises
// every call, and all I/O goes through three interfaces, so the simulation runs this exact code.
//
// What it does, and the rules it keeps (raft-pitfalls 15–18):
// - One tick for all groups: Tick() ticks every group that is not quiesced. Quiesced groups cost nothing.
// - One frame per peer per round: every message produced in a round (appends, votes, heartbeats of many
//   groups) to the same server goes out as one batch (IRaftTransport.Send); heartbeats are thereby coalesced,
//   each still carrying its group's own term and commit index.
// - One durable write per round: the hard states, entries and snapshots of every group that became ready
//   together go into one WriteBatch, written and synced once (ILogWriter). A change of the commit index alone is
//   not synced (Raft does not need it durable): it goes into the round's apply batch, before the applies. Messages that promise durable state
//   (votes, acknowledgements) are released only when that write completes; leader appends go at once.
//   While a write is in flight the next round's writes accumulate, so under load each sync covers more groups
//   (group commit without a timer).
// - Apply: committed entries are applied after their write is durable. The applies of every group completed in a
//   round go into one unsynced write batch (each group's state with its applied index, so applying is atomic and
//   replayable from the log), written before anything reads the state machines again (snapshots).
// - Log compaction: once a group's applied log grows past CompactionThreshold entries it is truncated, in the
//   same batch after that group's applies, so a crash can never keep the truncation and lose the applies.
// - Liveness: every peer gets at least one frame per tick (an empty frame is a ping). A peer not heard from for
//   LivenessTicks is suspected, and every quiesced group it leads is woken so that its followers can elect a
//   new leader (a quiesced follower never times out on its own).
// - Replica lifecycle: groups are created by Bootstrap (a new cluster) or by a snapshot from a leader whose
//   configuration includes this server. A message for a group not here is answered as an empty replica would
//   (so the leader sends a snapshot) and never applied to anything else. When a replica applies its own
//   removal it is destroyed and leaves a tombstone: only a snapshot from after the removal recreates it.
namespace Canopy.Replication.MultiRaft;

using Canopy.Replication.Raft;
using Canopy.Storage;

/// <summary>A group's replicated state machine on one server.</summary>
public interface IReplicaStateMachine : ISnapshotSource
{
    /// <summary>The last applied index, as recovered from storage when opened.</summary>
    ulong Applied { get; }

    /// <summary>Applies one committed entry (data may be empty: a leader's no-op; or a configuration change).
    /// Writes the new state and applied index into <paramref name="batch"/>.</summary>
    void Apply(in Entry entry, WriteBatch batch);

    /// <summary>Replaces the whole state with a snapshot (empty data: the initial state), writing it into <paramref name="batch"/>.</summary>
    void Install(Snapshot snapshot, WriteBatch batch);

    /// <summary>The batch holding every entry applied so far was written to the engine: in-memory state derived from
    /// those entries (e.g. a lease) may now be published to readers.</summary>
    void Written()
    {
    }
}

/// <summary>Opens (or creates empty) the state machine of a group from the server's storage.</summary>
public interface IStateMachineFactory
{
    IReplicaStateMachine Open(ulong group, IStorageEngine engine);

    /// <summary>The replica was destroyed (its keys are already deleted).</summary>
    void Destroyed(ulong group);
}

/// <summary>Makes write batches durable, one at a time, in submission order.</summary>
public interface ILogWriter
{
    /// <summary>Writes and syncs <paramref name="batch"/>; the driver then calls <see cref="RaftScheduler.OnWriteDurable"/>.</summary>
    void Submit(WriteBatch batch);
}

/// <summary>Sends a batch of messages to one server (an empty batch is a liveness ping). May drop.</summary>
public interface IRaftTransport
{
    void Send(ulong server, IReadOnlyList<Message> messages);
}

/// <summary>Scheduler tuning. Ticks are the driver's (e.g. 50 ms).</summary>
public sealed record SchedulerOptions
{
    public int ElectionTicks { get; init; } = 10;

    public int HeartbeatTicks { get; init; } = 2;

    /// <summary>Suspect a silent peer after this many ticks and wake the quiesced groups it leads.</summary>
    public int LivenessTicks { get; init; } = 10;

    /// <summary>Compact a group's log when it holds more applied entries than this.</summary>
    public int CompactionThreshold { get; init; } = 1000;

    /// <summary>Entries kept after compaction, for followers slightly behind.</summary>
    public int CompactionKeep { get; init; } = 100;

    public int QuiesceAfterHeartbeats { get; init; } = 2;

    public int MaxInflight { get; init; } = 256;

    public bool PreVote { get; init; } = true;

    public bool CheckQuorum { get; init; } = true;

    internal RaftBugs Bugs { get; init; } = RaftBugs.None;

    /// <summary>Planted bug: no failure detector, quiesced followers are never woken (raft-pitfalls 17).</summary>
    internal bool BugNeverWakeQuiesced { get; init; }
}

/// <summary>The multi-raft scheduler of one server. Not thread-safe: the driver serialises all calls.</summary>
public sealed class RaftScheduler
{
    /// <summary>Initial log position of a bootstrapped group (as CockroachDB: room below for nothing).</summary>
    public const ulong BootstrapIndex = 10;
    public const ulong BootstrapTerm = 5;

    private readonly IStorageEngine _engine;
    private readonly ILogWriter _writer;
    private readonly IRaftTransport _transport;
    private readonly IStateMachineFactory _factory;
    private readonly SchedulerOptions _options;
    private readonly int _seed;
    private readonly SortedDictionary<ulong, Replica> _replicas = [];
    private readonly Dictionary<ulong, ulong> _tombstones = [];
    private readonly SortedSet<ulong> _dirty = [];
    private readonly SortedDictionary<ulong, Peer> _peers = [];
    private readonly SortedDictionary<ulong, List<Message>> _outbox = [];

    // The write in flight (at most one) and the next one, accumulating meanwhile.
    private List<(Replica R, Ready Rd)>? _inFlight;
    private List<(Replica R, Ready Rd)> _next = [];
    private WriteBatch _nextBatch = new();

    // Applies (and compactions, destructions) of the current round, written unsynced at the end of the round.
    private WriteBatch _applyBatch = new();

    public RaftScheduler(ulong serverId, IStorageEngine engine, ILogWriter writer, IRaftTransport transport, IStateMachineFactory factory, SchedulerOptions options, int seed)
    {
        ServerId = serverId;
        _engine = engine;
        _writer = writer;
        _transport = transport;
        _factory = factory;
        _options = options;
        _seed = seed;
    }

    public ulong ServerId { get; }

    /// <summary>Counters for benchmarks and tests.</summary>
    public long WritesSubmitted { get; private set; }

    public long FramesSent { get; private set; }

    public long EntriesApplied { get; private set; }

    public IEnumerable<ulong> Groups => _replicas.Keys;

    public int GroupCount => _replicas.Count;

    public bool WriteInFlight => _inFlight is not null;

    /// <summary>
    /// Called for each applied entry, (group, entry), once the apply batch holding its effects was written to the
    /// engine: whoever is told "applied" (a proposer releasing its latches, a reader) must find the effects there.
    /// </summary>
    public Action<ulong, Entry>? OnApplied { get; set; }

    private readonly List<(ulong Group, Entry Entry)> _appliedNotWritten = [];

    /// <summary>Test hook: a Ready of (group) was just taken from its node (the log still matches its entries).</summary>
    internal Action<ulong, Ready>? OnReadyTaken { get; set; }

    public RaftNode? Node(ulong group) => _replicas.TryGetValue(group, out var r) ? r.Node : null;

    public IReplicaStateMachine? StateMachine(ulong group) => _replicas.TryGetValue(group, out var r) ? r.Sm : null;

    /// <summary>Servers this one talks to (liveness pings go to all of them).</summary>
    public void AddPeer(ulong server)
    {
        if (server != ServerId && !_peers.ContainsKey(server))
        {
            _peers[server] = new Peer();
        }
    }

    /// <summary>True if <paramref name="server"/> has been silent for longer than the liveness timeout.</summary>
    public bool IsSuspected(ulong server) => _peers.TryGetValue(server, out var p) && p.Suspected;

    /// <summary>Loads every replica found in storage (restart).</summary>
    public void Load()
    {
        var (groups, tombstones) = RaftStorage.ListGroups(_engine);
        foreach (var (g, idx) in tombstones)
        {
            _tombstones[g] = idx;
        }

        foreach (var g in groups)
        {
            var p = RaftStorage.Load(_engine, g);
            var sm = _factory.Open(g, _engine);
            var r = AddReplica(g, p.HardState, p.Truncated, p.Entries, sm);
            foreach (var id in r.Node.Conf.All)
            {
                AddPeer(id);
            }
        }
    }

    /// <summary>
    /// Creates a group's replica for a new cluster with the initial membership (every initial member does the
    /// same, with the same <paramref name="initialState"/>: the state machine's snapshot format). Durable when this returns.
    /// </summary>
    public void Bootstrap(ulong group, ConfState conf, ReadOnlyMemory<byte> initialState = default)
    {
        if (_replicas.ContainsKey(group))
        {
            throw new InvalidOperationException($"group {group} already exists on server {ServerId}");
        }

        var meta = new SnapshotMeta(BootstrapIndex, BootstrapTerm, conf);
        var hs = new HardState(BootstrapTerm, 0, BootstrapIndex);
        var sm = _factory.Open(group, _engine);
        var batch = new WriteBatch();
        sm.Install(new Snapshot(meta, initialState), batch);
        batch.Put(RaftStorage.DirectoryKey(group), []);
        batch.Put(RaftStorage.HardStateKey(group), RaftStorage.EncodeHardState(hs));
        batch.Put(RaftStorage.TruncatedKey(group), RaftStorage.EncodeMeta(meta));
        _engine.Write(batch, sync: true);
        AddReplica(group, hs, meta, [], sm);
        foreach (var id in conf.All)
        {
            AddPeer(id);
        }
    }

    // ---------------------------------------------------------------- inputs

    public void Tick()
    {
        foreach (var (g, r) in _replicas)
        {
            if (!r.Node.IsQuiesced)
            {
                r.Node.Tick();
                _dirty.Add(g);
            }
        }

        foreach (var (id, p) in _peers)
        {
            p.TicksSinceHeard++;
            if (!p.Suspected && p.TicksSinceHeard > _options.LivenessTicks)
            {
                p.Suspected = true;
                if (!_options.BugNeverWakeQuiesced)
                {
                    WakeGroupsLedBy(id);
                }
            }
        }

        ProcessReady();

        // Liveness pings: every peer hears from us every tick, so it can tell we are alive.
        foreach (var (id, p) in _peers)
        {
            if (!p.SentThisTick)
            {
                Transmit(id, []);
            }

            p.SentThisTick = false;
        }
    }

    /// <summary>A batch of messages arrived from <paramref name="from"/> (possibly empty: a ping).</summary>
    public void Receive(ulong from, IReadOnlyList<Message> messages)
    {
        if (!_peers.TryGetValue(from, out var peer))
        {
            AddPeer(from);
            peer = _peers[from];
        }

        peer.TicksSinceHeard = 0;
        peer.Suspected = false;
        foreach (var m in messages)
        {
            if (m.To != ServerId || m.From != from)
            {
                continue;
            }

            if (_replicas.TryGetValue(m.Group, out var r))
            {
                r.Node.Step(m);
                _dirty.Add(m.Group);
            }
            else
            {
                HandleMissing(m);
            }
        }

        ProcessReady();
    }

    public ProposeResult Propose(ulong group, ReadOnlyMemory<byte> data)
    {
        if (!_replicas.TryGetValue(group, out var r))
        {
            return new ProposeResult(ProposeStatus.NotLeader, 0, 0, 0);
        }

        var res = r.Node.Propose(data);
        _dirty.Add(group);
        return res;
    }

    public ProposeResult ProposeConfChange(ulong group, ConfChangeType type, ulong server)
    {
        if (!_replicas.TryGetValue(group, out var r))
        {
            return new ProposeResult(ProposeStatus.NotLeader, 0, 0, 0);
        }

        AddPeer(server);
        var res = r.Node.ProposeConfChange(type, server);
        _dirty.Add(group);
        return res;
    }

    public bool TransferLeadership(ulong group, ulong target)
    {
        if (!_replicas.TryGetValue(group, out var r))
        {
            return false;
        }

        _dirty.Add(group);
        return r.Node.TransferLeadership(target);
    }

    public void Campaign(ulong group)
    {
        if (_replicas.TryGetValue(group, out var r))
        {
            r.Node.Campaign();
            _dirty.Add(group);
        }
    }

    /// <summary>Collects the Ready of every group that has one and moves the pipeline along.</summary>
    public void ProcessReady()
    {
        // Completing a Ready with nothing to persist can make its group (or others) ready again: loop until quiet.
        while (_dirty.Count > 0)
        {
            var dirty = _dirty.ToArray();
            _dirty.Clear();
            CollectReadies(dirty);
            FlushApplied();
        }

        FlushOutbox();
        if (_inFlight is null && _next.Count > 0)
        {
            _inFlight = _next;
            var batch = _nextBatch;
            _next = [];
            _nextBatch = new WriteBatch();
            WritesSubmitted++;
            _writer.Submit(batch);
        }
    }

    private void CollectReadies(ulong[] dirty)
    {
        foreach (var g in dirty)
        {
            if (!_replicas.TryGetValue(g, out var r) || r.InFlight || !r.Node.HasReady())
            {
                continue;
            }

            var rd = r.Node.GetReady();
            OnReadyTaken?.Invoke(g, rd);
            r.InFlight = true;
            foreach (var m in rd.MessagesNow)
            {
                Enqueue(m);
            }

            if (rd.MustPersist)
            {
                AddPersistence(r, rd, _nextBatch);
                _next.Add((r, rd));
            }
            else
            {
                // Nothing to make durable: what it promises is already durable. A new commit index alone is written
                // unsynced, in the apply batch before the applies it allows (a crash loses both or neither).
                if (rd.HardState is { } hs)
                {
                    _applyBatch.Put(RaftStorage.HardStateKey(g), RaftStorage.EncodeHardState(hs));
                }

                Complete(r, rd);
            }
        }
    }

    /// <summary>The driver reports that the last submitted write is durable.</summary>
    public void OnWriteDurable()
    {
        var done = _inFlight ?? throw new InvalidOperationException("no write in flight");
        _inFlight = null;
        foreach (var (r, rd) in done)
        {
            if (_replicas.TryGetValue(r.Group, out var live) && ReferenceEquals(live, r))
            {
                Complete(r, rd);
            }
        }

        FlushApplied();
        ProcessReady();
    }

    private void FlushApplied()
    {
        if (!_applyBatch.IsEmpty)
        {
            _engine.Write(_applyBatch, sync: false);
            _applyBatch = new WriteBatch();
        }

        if (_appliedNotWritten.Count > 0)
        {
            // After the write: a completed proposal's effects are readable (found by the bank workload's history
            // check: a latch released before the write let a read miss an acknowledged intent).
            ulong last = 0;
            foreach (var (g, e) in _appliedNotWritten)
            {
                if (g != last && _replicas.TryGetValue(g, out var r))
                {
                    r.Sm.Written();
                }

                last = g;
                OnApplied?.Invoke(g, e);
            }

            _appliedNotWritten.Clear();
        }
    }

    // ---------------------------------------------------------------- internals

    private sealed class Replica(ulong group, RaftNode node, IReplicaStateMachine sm, ulong persistedLast)
    {
        public ulong Group { get; } = group;

        public RaftNode Node { get; } = node;

        public IReplicaStateMachine Sm { get; } = sm;

        /// <summary>Highest log index written to storage (entries above it must be deleted when replaced).</summary>
        public ulong PersistedLast { get; set; } = persistedLast;

        public bool InFlight { get; set; }
    }

    private sealed class Peer
    {
        public int TicksSinceHeard { get; set; }

        public bool Suspected { get; set; }

        public bool SentThisTick { get; set; }
    }

    private Replica AddReplica(ulong group, HardState hs, SnapshotMeta meta, IReadOnlyList<Entry> entries, IReplicaStateMachine sm)
    {
        var cfg = new RaftConfig
        {
            Id = ServerId,
            Group = group,
            ElectionTicks = _options.ElectionTicks,
            HeartbeatTicks = _options.HeartbeatTicks,
            QuiesceAfterHeartbeats = _options.QuiesceAfterHeartbeats,
            MaxInflight = _options.MaxInflight,
            PreVote = _options.PreVote,
            CheckQuorum = _options.CheckQuorum,
            Bugs = _options.Bugs,
        };
        var random = new SeededRandom(unchecked((int)((ulong)_seed * 1_000_003UL) ^ (int)(group * 7919UL) ^ (int)ServerId));
        var node = new RaftNode(cfg, hs, meta, entries, sm.Applied, random, sm);
        var last = entries.Count > 0 ? entries[^1].Index : meta.Index;
        var r = new Replica(group, node, sm, last);
        _replicas[group] = r;
        _dirty.Add(group);
        return r;
    }

    private void HandleMissing(Message m)
    {
        switch (m.Type)
        {
            case MessageType.Append:
                // Answer as an empty replica would: the leader falls back to a snapshot.
                Enqueue(new Message { Type = MessageType.AppendResp, Group = m.Group, From = ServerId, To = m.From, Term = m.Term, Index = m.Index, Reject = true });
                break;
            case MessageType.Heartbeat:
                Enqueue(new Message { Type = MessageType.HeartbeatResp, Group = m.Group, From = ServerId, To = m.From, Term = m.Term });
                break;
            case MessageType.InstallSnapshot when m.Snapshot is { } snap && snap.Meta.Conf.Contains(ServerId):
                if (_tombstones.TryGetValue(m.Group, out var removedAt) && snap.Meta.Index <= removedAt)
                {
                    return;
                }

                var sm = _factory.Open(m.Group, _engine);
                _applyBatch.Put(RaftStorage.DirectoryKey(m.Group), []); // written before the snapshot's synced batch
                var r = AddReplica(m.Group, HardState.Empty, SnapshotMeta.Empty, [], sm);
                r.Node.Step(m);
                _dirty.Add(m.Group);
                break;
        }
    }

    private static void AddPersistence(Replica r, Ready rd, WriteBatch batch)
    {
        var g = r.Group;
        if (rd.Snapshot is { } snap)
        {
            r.Sm.Install(snap, batch);
            batch.DeleteRange(RaftStorage.LogKey(g, 0), RaftStorage.LogKey(g, ulong.MaxValue));
            batch.Put(RaftStorage.TruncatedKey(g), RaftStorage.EncodeMeta(snap.Meta));
            r.PersistedLast = snap.Meta.Index;
        }

        if (rd.Entries.Length > 0)
        {
            RaftStorage.AppendEntries(batch, g, rd.Entries, r.PersistedLast);
            r.PersistedLast = rd.Entries[^1].Index;
        }

        if (rd.HardState is { } hs)
        {
            batch.Put(RaftStorage.HardStateKey(g), RaftStorage.EncodeHardState(hs));
        }
    }

    private void Complete(Replica r, Ready rd)
    {
        foreach (var m in rd.MessagesAfterPersist)
        {
            Enqueue(m);
        }

        var removed = false;
        foreach (var e in rd.CommittedEntries)
        {
            r.Sm.Apply(e, _applyBatch);
            EntriesApplied++;
            _appliedNotWritten.Add((r.Group, e));

            if (e.Type == EntryType.ConfChange && !ConfState.Decode(e.Data.Span).Contains(ServerId))
            {
                removed = true;
            }
        }

        r.Node.Advance(rd);
        r.InFlight = false;
        _dirty.Add(r.Group);

        if (removed && !r.Node.Conf.Contains(ServerId))
        {
            Destroy(r);
            return;
        }

        MaybeCompact(r);
    }

    private void MaybeCompact(Replica r)
    {
        var node = r.Node;
        var applied = Math.Min(node.Applied, node.StableIndex);
        if (applied < node.FirstIndex || applied - node.FirstIndex + 1 <= (ulong)_options.CompactionThreshold)
        {
            return;
        }

        var to = applied - (ulong)_options.CompactionKeep;
        var first = node.FirstIndex;
        var meta = node.Compact(to);

        // After this group's applies in the same batch: a crash keeps both or neither.
        _applyBatch
            .Put(RaftStorage.TruncatedKey(r.Group), RaftStorage.EncodeMeta(meta))
            .DeleteRange(RaftStorage.LogKey(r.Group, first), RaftStorage.LogKey(r.Group, meta.Index + 1));
    }

    private void Destroy(Replica r)
    {
        var g = r.Group;
        _replicas.Remove(g);
        _tombstones[g] = r.Node.Applied;
        _applyBatch
            .DeleteRange(RaftStorage.GroupPrefix(g), RaftStorage.GroupEnd(g))
            .Delete(RaftStorage.DirectoryKey(g))
            .Put(RaftStorage.TombstoneKey(g), RaftStorage.EncodeTombstone(r.Node.Applied));
        _factory.Destroyed(g);
    }

    private void WakeGroupsLedBy(ulong server)
    {
        foreach (var (g, r) in _replicas)
        {
            if (r.Node.IsQuiesced && r.Node.Leader == server)
            {
                r.Node.Wake();
                _dirty.Add(g);
            }
        }
    }

    private void Enqueue(Message m)
    {
        if (!_outbox.TryGetValue(m.To, out var list))
        {
            list = [];
            _outbox[m.To] = list;
        }

        list.Add(m);
    }

    private void FlushOutbox()
    {
        foreach (var (to, list) in _outbox)
        {
            if (list.Count > 0)
            {
                Transmit(to, list.ToArray());
                list.Clear();
            }
        }
    }

    private void Transmit(ulong to, IReadOnlyList<Message> messages)
    {
        AddPeer(to);
        if (_peers.TryGetValue(to, out var p))
        {
            p.SentThisTick = true;
        }

        FramesSent++;
        _transport.Send(to, messages);
    }
}

// A small scripted network of RaftNode replicas of one group, for deterministic unit tests of the Raft core.
//
// Every node has an in-memory "disk" (what its Readies said to persist), a state machine (the list of entries it
// applied, which is also what its ISnapshotSource captures), and a seeded random source. Messages go through one
// FIFO queue; Deliver() runs Readies and messages until nothing is left to do. Writes are synchronous: a Ready is
// persisted, then its messages are queued, then its committed entries applied, then Advance is called.
//
// The cluster also records every Ready (for the persistence-rule tests), every message emitted (so a test can
// replay an old one) and every applied entry per index across all nodes (state-machine safety is checked by
// AppliedConflicts and LostCommittedEntries rather than by throwing, so planted-bug tests can observe damage).
using System.Buffers.Binary;
using System.Text;
using Canopy.Replication.Raft;

namespace Canopy.Replication.Tests.Raft;

internal sealed class RaftTestCluster
{
    public const ulong GroupId = 1;
    public const ulong BootIndex = 10;
    public const ulong BootTerm = 5;

    private readonly Func<RaftConfig, RaftConfig> _configure;
    private readonly int _seed;
    private readonly SortedDictionary<ulong, RaftNode> _nodes = [];
    private readonly Dictionary<ulong, Disk> _disks = [];
    private readonly Dictionary<ulong, StateMachine> _state = [];
    private readonly Queue<Message> _queue = new();
    private readonly List<Func<Message, bool>> _dropFilters = [];
    private readonly Dictionary<ulong, Entry> _firstAppliedAt = [];

    /// <summary>N voters 1..N, bootstrapped at (index 10, term 5), nothing applied beyond the bootstrap.</summary>
    public RaftTestCluster(int voters, Func<RaftConfig, RaftConfig>? configure = null, int seed = 1)
    {
        _configure = configure ?? (c => c);
        _seed = seed;
        var conf = new ConfState(Enumerable.Range(1, voters).Select(i => (ulong)i), []);
        for (ulong id = 1; id <= (ulong)voters; id++)
        {
            _disks[id] = new Disk
            {
                HardState = new HardState(BootTerm, 0, BootIndex),
                SnapshotMeta = new SnapshotMeta(BootIndex, BootTerm, conf),
                SnapshotData = EncodeState([]),
            };
            Start(id);
        }
    }

    /// <summary>Every Ready any node produced, in order.</summary>
    public List<(ulong Id, Ready Ready)> Readies { get; } = [];

    /// <summary>Every message any node emitted (delivered or dropped), in order.</summary>
    public List<Message> Sent { get; } = [];

    /// <summary>Indexes at which two applications (on any nodes, at any time) disagreed: state-machine safety.</summary>
    public List<string> AppliedConflicts { get; } = [];

    public IEnumerable<ulong> Ids => _nodes.Keys;

    public RaftNode Node(ulong id) => _nodes[id];

    public Disk DiskOf(ulong id) => _disks[id];

    /// <summary>The entries node <paramref name="id"/>'s state machine holds (snapshot content included), in order.</summary>
    public IReadOnlyList<Entry> AppliedEntries(ulong id) => _state[id].Entries;

    /// <summary>The non-empty normal commands node <paramref name="id"/> applied, as strings.</summary>
    public List<string> Payloads(ulong id) =>
        [.. _state[id].Entries.Where(e => e.Type == EntryType.Normal && e.Data.Length > 0).Select(e => Encoding.UTF8.GetString(e.Data.Span))];

    /// <summary>The leader of the highest term (0 if none).</summary>
    public ulong Leader() =>
        _nodes.Values.Where(n => n.Role == RaftRole.Leader).OrderByDescending(n => n.Term).Select(n => n.Id).FirstOrDefault();

    public List<ulong> Leaders() => [.. _nodes.Values.Where(n => n.Role == RaftRole.Leader).Select(n => n.Id)];

    public static ReadOnlyMemory<byte> Cmd(string s) => Encoding.UTF8.GetBytes(s);

    public ProposeResult Propose(ulong id, string command) => _nodes[id].Propose(Cmd(command));

    // ------------------------------------------------------------------ network

    public void Isolate(ulong id) => _dropFilters.Add(m => m.From == id || m.To == id);

    public void Drop(ulong from, ulong to) => _dropFilters.Add(m => m.From == from && m.To == to);

    public void DropWhere(Func<Message, bool> filter) => _dropFilters.Add(filter);

    /// <summary>Removes every drop filter.</summary>
    public void Heal() => _dropFilters.Clear();

    /// <summary>Queues a message (e.g. an old one again) and delivers.</summary>
    public void Inject(Message m)
    {
        _queue.Enqueue(m);
        Deliver();
    }

    /// <summary>Processes Readies and delivers queued messages until the cluster is quiet.</summary>
    public void Deliver()
    {
        for (var round = 0; ; round++)
        {
            if (round > 100_000)
            {
                throw new InvalidOperationException("test cluster: no quiet point after 100000 rounds");
            }

            var any = false;
            foreach (var node in _nodes.Values)
            {
                any |= ProcessReady(node.Id);
            }

            if (_queue.Count == 0)
            {
                if (!any)
                {
                    return;
                }

                continue;
            }

            // Deliver what is queued now; what it causes is queued behind it.
            for (var n = _queue.Count; n > 0; n--)
            {
                var m = _queue.Dequeue();
                if (_dropFilters.Any(f => f(m)) || !_nodes.TryGetValue(m.To, out var node))
                {
                    continue;
                }

                node.Step(m);
            }
        }
    }

    /// <summary>Ticks every node once, then delivers; <paramref name="n"/> times.</summary>
    public void TickAll(int n = 1)
    {
        for (var i = 0; i < n; i++)
        {
            foreach (var node in _nodes.Values)
            {
                node.Tick();
            }

            Deliver();
        }
    }

    /// <summary>Ticks one node <paramref name="n"/> times, delivering after each tick.</summary>
    public void Tick(ulong id, int n = 1)
    {
        for (var i = 0; i < n; i++)
        {
            _nodes[id].Tick();
            Deliver();
        }
    }

    /// <summary>Ticks everyone until <paramref name="done"/> holds; false if it does not within <paramref name="maxTicks"/>.</summary>
    public bool TickUntil(Func<bool> done, int maxTicks = 500)
    {
        for (var i = 0; i < maxTicks; i++)
        {
            if (done())
            {
                return true;
            }

            TickAll();
        }

        return done();
    }

    /// <summary>Campaigns on <paramref name="id"/>, delivers, and returns whether it became leader.</summary>
    public bool Elect(ulong id)
    {
        _nodes[id].Campaign();
        Deliver();
        return _nodes[id].Role == RaftRole.Leader;
    }

    // ------------------------------------------------------------------ nodes and disks

    /// <summary>Restarts a node from its disk: everything not persisted is lost, the state machine restarts at the snapshot.</summary>
    public void Crash(ulong id) => Start(id);

    /// <summary>Adds an empty, uninitialised replica (to be added by a configuration change).</summary>
    public void AddNode(ulong id)
    {
        _disks[id] = new Disk { HardState = HardState.Empty, SnapshotMeta = SnapshotMeta.Empty, SnapshotData = EncodeState([]) };
        Start(id);
    }

    /// <summary>Compacts node <paramref name="id"/>'s log up to <paramref name="index"/> and persists the compaction point.</summary>
    public SnapshotMeta Compact(ulong id, ulong index)
    {
        var meta = _nodes[id].Compact(index);
        var disk = _disks[id];
        disk.SnapshotMeta = meta;
        disk.SnapshotData = EncodeState([.. _state[id].Entries.Where(e => e.Index <= meta.Index)]);
        disk.Entries.RemoveAll(e => e.Index <= meta.Index);
        return meta;
    }

    /// <summary>
    /// Entries some node applied that a later leader no longer holds at their index (a committed entry was lost).
    /// </summary>
    public List<string> LostCommittedEntries(ulong leader)
    {
        var node = _nodes[leader];
        var lost = new List<string>();
        foreach (var (index, e) in _firstAppliedAt.OrderBy(kv => kv.Key))
        {
            if (index > node.CompactedTo.Index && node.TermAt(index) != e.Term)
            {
                lost.Add($"index {index}: applied term {e.Term}, leader {leader} has term {node.TermAt(index)}");
            }
        }

        return lost;
    }

    private void Start(ulong id)
    {
        var disk = _disks[id];
        var cfg = _configure(new RaftConfig { Id = id, Group = GroupId });
        _state[id] = new StateMachine { Entries = DecodeState(disk.SnapshotData), Index = disk.SnapshotMeta.Index };
        _nodes[id] = new RaftNode(
            cfg,
            disk.HardState,
            disk.SnapshotMeta,
            [.. disk.Entries],
            disk.SnapshotMeta.Index,
            new SeededRandom((_seed * 1000) + (int)id),
            new StateSnapshotSource(_state[id]));
    }

    private bool ProcessReady(ulong id)
    {
        var node = _nodes[id];
        if (!node.HasReady())
        {
            return false;
        }

        var rd = node.GetReady();
        Readies.Add((id, rd));

        // 1. persist: hard state, snapshot, entries (replacing persisted ones from Entries[0].Index on).
        var disk = _disks[id];
        if (rd.HardState is { } hs)
        {
            disk.HardState = hs;
        }

        if (rd.Snapshot is { } snap)
        {
            disk.SnapshotMeta = snap.Meta;
            disk.SnapshotData = snap.Data.ToArray();
            disk.Entries.Clear();
            var sm = _state[id];
            sm.Entries = DecodeState(snap.Data.Span);
            sm.Index = snap.Meta.Index;
            foreach (var e in sm.Entries)
            {
                RecordApplied(id, e);
            }
        }

        if (rd.Entries.Length > 0)
        {
            var first = rd.Entries[0].Index;
            disk.Entries.RemoveAll(e => e.Index >= first);
            disk.Entries.AddRange(rd.Entries);
        }

        // 2. send (both lists: the write above is already durable).
        foreach (var m in rd.MessagesNow.Concat(rd.MessagesAfterPersist))
        {
            Sent.Add(m);
            _queue.Enqueue(m);
        }

        // 3. apply.
        var state = _state[id];
        foreach (var e in rd.CommittedEntries)
        {
            if (e.Index != state.Index + 1)
            {
                AppliedConflicts.Add($"node {id} applied index {e.Index} after {state.Index}");
            }

            state.Entries.Add(e);
            state.Index = e.Index;
            RecordApplied(id, e);
        }

        node.Advance(rd);
        return true;
    }

    private void RecordApplied(ulong id, Entry e)
    {
        if (!_firstAppliedAt.TryGetValue(e.Index, out var prior))
        {
            _firstAppliedAt[e.Index] = e;
        }
        else if (prior.Term != e.Term || !prior.Data.Span.SequenceEqual(e.Data.Span))
        {
            AppliedConflicts.Add($"node {id} applied ({e.Index}, t{e.Term}) where ({prior.Index}, t{prior.Term}) was applied before");
        }
    }

    // ------------------------------------------------------------------ state machine and snapshots

    internal static byte[] EncodeState(IReadOnlyList<Entry> entries)
    {
        var size = 4 + entries.Sum(e => 8 + 8 + 1 + 4 + e.Data.Length);
        var buf = new byte[size];
        BinaryPrimitives.WriteInt32LittleEndian(buf, entries.Count);
        var off = 4;
        foreach (var e in entries)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(buf.AsSpan(off), e.Index);
            BinaryPrimitives.WriteUInt64LittleEndian(buf.AsSpan(off + 8), e.Term);
            buf[off + 16] = (byte)e.Type;
            BinaryPrimitives.WriteInt32LittleEndian(buf.AsSpan(off + 17), e.Data.Length);
            e.Data.Span.CopyTo(buf.AsSpan(off + 21));
            off += 21 + e.Data.Length;
        }

        return buf;
    }

    internal static List<Entry> DecodeState(ReadOnlySpan<byte> data)
    {
        var n = BinaryPrimitives.ReadInt32LittleEndian(data);
        var list = new List<Entry>(n);
        var off = 4;
        for (var i = 0; i < n; i++)
        {
            var index = BinaryPrimitives.ReadUInt64LittleEndian(data[off..]);
            var term = BinaryPrimitives.ReadUInt64LittleEndian(data[(off + 8)..]);
            var type = (EntryType)data[off + 16];
            var len = BinaryPrimitives.ReadInt32LittleEndian(data[(off + 17)..]);
            list.Add(new Entry(index, term, type, data.Slice(off + 21, len).ToArray()));
            off += 21 + len;
        }

        return list;
    }

    /// <summary>What one node's Readies said to persist.</summary>
    internal sealed class Disk
    {
        public HardState HardState { get; set; }

        public required SnapshotMeta SnapshotMeta { get; set; }

        public required byte[] SnapshotData { get; set; }

        public List<Entry> Entries { get; } = [];
    }

    private sealed class StateMachine
    {
        public required List<Entry> Entries { get; set; }

        public ulong Index { get; set; }
    }

    /// <summary>The state machine as of its applied index: every entry it applied.</summary>
    private sealed class StateSnapshotSource(StateMachine state) : ISnapshotSource
    {
        public (ulong Index, ReadOnlyMemory<byte> Data) Capture() => (state.Index, EncodeState(state.Entries));
    }
}

// The replicated state of one range
// ==================================
//
// Every replica of a range applies the same committed commands in the same order (Raft), so they hold the same:
// - the range descriptor (span and replicas),
// - the lease (holder, start, expiration, sequence),
// - the MVCC data of the span,
// - the applied index, written in the same batch as each command's effects (atomic, replayable).
//
// Commands are effects evaluated at the leaseholder (RangeCommand). Apply enforces, deterministically, on every
// replica (raft-pitfalls 13, 14):
// - a write applies only if the lease it was evaluated under is still in force (same sequence): a deposed
//   leaseholder's late proposals do nothing (ApplyResult.LeaseChanged);
// - every written key lies in the range's span (else Rejected);
// - a lease request applies only if the lease it saw is still in force; an extension by the holder (starting
//   before the current lease expires) keeps the sequence and start and never shortens the lease; any lease starting
//   after the current one expired is new: new start, sequence + 1 (even for the same holder: a restarted server
//   takes a new lease rather than reviving the one it held before its restart); transfers are refused for now.
// - an eval command (effects of a transactional request: intents, versions, transaction records) applies only under
//   the lease it was evaluated under, and only if every engine key lies in the range's data or record span.
// Snapshots carry the descriptor, the lease and every engine key of the span (data and transaction records), and
// replace all of it atomically.
// Every applied engine op is also handed to the replica's change feed (RangeFeed), which decodes it only once the
// apply batch is written (Written) and only while someone reads the feed; a snapshot resets the feed.
namespace Canopy.Ranges;

using System.Buffers.Binary;
using System.Collections.Concurrent;
using Canopy.Clock;
using Canopy.Mvcc;
using Canopy.Replication.MultiRaft;
using Canopy.Replication.Raft;
using Canopy.Storage;

/// <summary>The state machine of one range replica (see the file header).</summary>
public sealed class RangeStateMachine : IReplicaStateMachine
{
    private readonly ulong _rangeId;
    private readonly IStorageEngine _engine;
    private readonly MvccStore _mvcc;
    private readonly ConcurrentDictionary<ulong, ApplyResult> _results = new();
    private volatile RangeDescriptor? _descriptor;
    private volatile Lease _lease = Lease.None;          // as applied (apply-time checks)
    private volatile Lease _publishedLease = Lease.None; // as written to the engine (what the server serves under)

    public RangeStateMachine(ulong rangeId, IStorageEngine engine)
    {
        _rangeId = rangeId;
        _engine = engine;
        _mvcc = new MvccStore(engine);
        if (engine.Get(RangeKeys.AppliedState(rangeId)) is { Length: 8 } a)
        {
            Applied = BinaryPrimitives.ReadUInt64LittleEndian(a);
        }

        if (engine.Get(RangeKeys.RangeDescriptor(rangeId)) is { } d)
        {
            _descriptor = RangeDescriptor.Decode(d);
        }

        if (engine.Get(RangeKeys.Lease(rangeId)) is { } l)
        {
            _lease = Lease.Decode(l);
            _publishedLease = _lease;
        }
    }

    public ulong RangeId => _rangeId;

    /// <summary>Null until the replica is initialised (bootstrap or snapshot).</summary>
    public RangeDescriptor? Descriptor => _descriptor;

    /// <summary>The lease in force, published only once the entries applied before it are written to the engine
    /// (a new leaseholder must not serve reads before the previous holder's last writes are readable here).</summary>
    public Lease Lease => _publishedLease;

    /// <inheritdoc/>
    public void Written()
    {
        _publishedLease = _lease;
        Feed.Flush();
    }

    public MvccStore Mvcc => _mvcc;

    /// <summary>The change feed of this replica (served at the leaseholder; see RangeFeed).</summary>
    public RangeFeed Feed { get; } = new();

    public ulong Applied { get; private set; }

    /// <summary>Called on the raft loop after a command applied: (index, result). The server resolves proposals with it.</summary>
    public Action<ulong, ApplyResult>? OnCommandApplied { get; set; }

    /// <summary>The initial state of a range in a new cluster (written into the bootstrap snapshot).</summary>
    public static byte[] InitialSnapshot(RangeDescriptor descriptor) =>
        new ByteWriter().Bytes(descriptor.Encode()).Bytes(Lease.None.Encode()).U64(0).ToArray();

    public void Apply(in Entry entry, WriteBatch batch)
    {
        var result = ApplyResult.Applied;
        if (entry.Type == EntryType.Normal && entry.Data.Length > 0)
        {
            RangeCommand? cmd;
            try
            {
                cmd = RangeCommand.Decode(entry.Data.Span);
            }
            catch (FormatException)
            {
                cmd = null; // deterministic on every replica: an undecodable command does nothing
            }

            result = cmd switch
            {
                RangeCommand.WriteCommand w => ApplyWrite(w, batch),
                RangeCommand.LeaseCommand l => ApplyLease(l, batch),
                RangeCommand.EvalCommand e => ApplyEval(e, batch),
                _ => Record(ApplyResult.Rejected), // recorded, so the proposer is not told "applied"
            };
        }

        Applied = entry.Index;
        batch.Put(RangeKeys.AppliedState(_rangeId), U64(Applied));
        OnCommandApplied?.Invoke(entry.Index, result);
    }

    public void Install(Snapshot snapshot, WriteBatch batch)
    {
        var r = new ByteReader(snapshot.Data.Span);
        var descriptor = RangeDescriptor.Decode(r.Bytes());
        var lease = Lease.Decode(r.Bytes());
        var (lo, hi) = MvccKeys.Span(descriptor.StartKey, descriptor.EndKey);
        if (_descriptor is { } old)
        {
            var (olo, ohi) = MvccKeys.Span(old.StartKey, old.EndKey);
            batch.DeleteRange(olo, ohi);
        }

        batch.DeleteRange(lo, hi);
        if (_descriptor is { } oldRecords)
        {
            var (otlo, othi) = TxnKeys.Span(oldRecords.StartKey, oldRecords.EndKey);
            batch.DeleteRange(otlo, othi);
        }

        var (tlo, thi) = TxnKeys.Span(descriptor.StartKey, descriptor.EndKey);
        batch.DeleteRange(tlo, thi);
        var count = r.U64();
        for (ulong i = 0; i < count; i++)
        {
            batch.Put(r.Bytes(), r.Bytes());
        }

        _descriptor = descriptor;
        _lease = lease;
        _publishedLease = lease;
        Feed.Reset();
        Applied = snapshot.Meta.Index;
        batch.Put(RangeKeys.RangeDescriptor(_rangeId), descriptor.Encode());
        batch.Put(RangeKeys.Lease(_rangeId), lease.Encode());
        batch.Put(RangeKeys.AppliedState(_rangeId), U64(Applied));
    }

    public (ulong Index, ReadOnlyMemory<byte> Data) Capture()
    {
        var descriptor = _descriptor ?? throw new InvalidOperationException($"range {_rangeId}: snapshot of an uninitialised replica");
        var (lo, hi) = MvccKeys.Span(descriptor.StartKey, descriptor.EndKey);
        var (tlo, thi) = TxnKeys.Span(descriptor.StartKey, descriptor.EndKey);
        var rows = _engine.Scan(lo, hi).Concat(_engine.Scan(tlo, thi)).ToList();
        var w = new ByteWriter().Bytes(descriptor.Encode()).Bytes(_lease.Encode()).U64((ulong)rows.Count);
        foreach (var (k, v) in rows)
        {
            w.Bytes(k).Bytes(v);
        }

        return (Applied, w.ToArray());
    }

    /// <summary>The result of applying the command at <paramref name="index"/>, if it was not a plain success.</summary>
    public ApplyResult TakeResult(ulong index) => _results.TryRemove(index, out var r) ? r : ApplyResult.Applied;

    private ApplyResult ApplyWrite(RangeCommand.WriteCommand w, WriteBatch batch)
    {
        if (w.LeaseSequence != _lease.Sequence || _descriptor is not { } d)
        {
            return Record(ApplyResult.LeaseChanged);
        }

        foreach (var x in w.Writes)
        {
            // Checked here, deterministically, and never by throwing: an exception while applying would repeat on
            // every replica at the same entry (a poison entry that stops the range for good).
            if (!d.Contains(x.Key) || x.Key.Length > MvccKeys.MaxUserKeyLength || x.Timestamp.IsZero)
            {
                return Record(ApplyResult.Rejected);
            }
        }

        foreach (var x in w.Writes)
        {
            if (x.Value is { } v)
            {
                _mvcc.Put(batch, x.Key, x.Timestamp, v);
            }
            else
            {
                _mvcc.Delete(batch, x.Key, x.Timestamp);
            }

            Feed.CollectVersion(x.Key, x.Timestamp, x.Value);
        }

        return ApplyResult.Applied;
    }

    private ApplyResult ApplyEval(RangeCommand.EvalCommand e, WriteBatch batch)
    {
        if (e.LeaseSequence != _lease.Sequence || _descriptor is not { } d)
        {
            return Record(ApplyResult.LeaseChanged);
        }

        var (lo, hi) = MvccKeys.Span(d.StartKey, d.EndKey);
        var (tlo, thi) = TxnKeys.Span(d.StartKey, d.EndKey);
        foreach (var op in e.Ops)
        {
            // Deterministic validation, never by throwing (see ApplyWrite).
            var inData = op.Key.AsSpan().SequenceCompareTo(lo) >= 0 && op.Key.AsSpan().SequenceCompareTo(hi) < 0;
            var inRecords = op.Key.AsSpan().SequenceCompareTo(tlo) >= 0 && op.Key.AsSpan().SequenceCompareTo(thi) < 0;
            if (!inData && !inRecords)
            {
                return Record(ApplyResult.Rejected);
            }
        }

        foreach (var op in e.Ops)
        {
            if (op.Value is { } v)
            {
                batch.Put(op.Key, v);
            }
            else
            {
                batch.Delete(op.Key);
            }

            Feed.Collect(op);
        }

        return ApplyResult.Applied;
    }

    private ApplyResult ApplyLease(RangeCommand.LeaseCommand c, WriteBatch batch)
    {
        var cur = _lease;
        var req = c.Lease;
        if (c.PreviousSequence != cur.Sequence || req.Holder == 0 || req.Expiration.CompareTo(req.Start) <= 0)
        {
            return Record(ApplyResult.LeaseChanged);
        }

        Lease next;
        if (c.Transfer)
        {
            // Not supported yet: a transfer must name its proposer so apply can check it is the current holder
            // (and the new holder must refuse writes below the transfer's start). Nothing proposes one today.
            return Record(ApplyResult.Rejected);
        }
        else if (cur.Holder == req.Holder && cur.Holder != 0 && req.Start.CompareTo(cur.Expiration) <= 0)
        {
            next = cur with { Expiration = req.Expiration.CompareTo(cur.Expiration) > 0 ? req.Expiration : cur.Expiration };
        }
        else if (req.Start.CompareTo(cur.Expiration) > 0)
        {
            next = req with { Sequence = cur.Sequence + 1 };
        }
        else
        {
            return Record(ApplyResult.LeaseChanged);
        }

        _lease = next;
        batch.Put(RangeKeys.Lease(_rangeId), next.Encode());
        return ApplyResult.Applied;
    }

    private ApplyResult Record(ApplyResult r)
    {
        _results[Applied + 1] = r;
        if (_results.Count > 4096)
        {
            foreach (var k in _results.Keys.Where(k => k + 4096 < Applied).ToArray())
            {
                _results.TryRemove(k, out _);
            }
        }

        return r;
    }

    private static byte[] U64(ulong v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        return b;
    }
}

/// <summary>Opens a <see cref="RangeStateMachine"/> per group and keeps them for the server's evaluation.</summary>
public sealed class RangeStateMachineFactory : IStateMachineFactory
{
    private readonly ConcurrentDictionary<ulong, RangeStateMachine> _machines = new();

    public RangeStateMachine? Get(ulong rangeId) => _machines.TryGetValue(rangeId, out var m) ? m : null;

    public IEnumerable<RangeStateMachine> All => _machines.Values;

    public IReplicaStateMachine Open(ulong group, IStorageEngine engine) => _machines[group] = new RangeStateMachine(group, engine);

    public void Destroyed(ulong group) => _machines.TryRemove(group, out _);
}

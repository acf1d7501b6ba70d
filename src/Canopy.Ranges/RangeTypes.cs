using Canopy.Clock;

namespace Canopy.Ranges;

/// <summary>
/// A range: the user keys in [StartKey, EndKey) (EndKey null: to the end of the key space), replicated on
/// <see cref="Replicas"/> (node ids) by the Raft group with the same id.
/// </summary>
public sealed record RangeDescriptor(ulong RangeId, byte[] StartKey, byte[]? EndKey, ulong[] Replicas)
{
    public bool Contains(ReadOnlySpan<byte> key) =>
        key.SequenceCompareTo(StartKey) >= 0 && (EndKey is null || key.SequenceCompareTo(EndKey) < 0);

    public byte[] Encode()
    {
        var w = new ByteWriter().U64(RangeId).Bytes(StartKey).OptBytes(EndKey).U64((ulong)Replicas.Length);
        foreach (var r in Replicas)
        {
            w.U64(r);
        }

        return w.ToArray();
    }

    public static RangeDescriptor Decode(ReadOnlySpan<byte> data)
    {
        var r = new ByteReader(data);
        var id = r.U64();
        var start = r.Bytes();
        var end = r.OptBytes();
        var n = r.U64();
        if (n > 64)
        {
            throw new FormatException("range descriptor: too many replicas");
        }

        var replicas = new ulong[n];
        for (var i = 0; i < replicas.Length; i++)
        {
            replicas[i] = r.U64();
        }

        return new RangeDescriptor(id, start, end, replicas);
    }

    public override string ToString() => $"r{RangeId} [{KeyText(StartKey)}, {(EndKey is null ? "∞" : KeyText(EndKey))}) on {string.Join(",", Replicas)}";

    /// <summary>A key as text when printable, else hex.</summary>
    public static string KeyText(ReadOnlySpan<byte> key)
    {
        if (key.Length == 0)
        {
            return "\"\"";
        }

        foreach (var b in key)
        {
            if (b < 0x20 || b > 0x7e)
            {
                return "0x" + Convert.ToHexString(key);
            }
        }

        return System.Text.Encoding.ASCII.GetString(key);
    }
}

/// <summary>
/// A range lease: <see cref="Holder"/> may serve the range's reads and writes for HLC times in
/// [<see cref="Start"/>, <see cref="Expiration"/> - max offset). A new holder's lease starts after the previous
/// one's expiration (or at a transfer's start, which the old holder already stopped serving at), so two servers
/// never serve one range. <see cref="Sequence"/> grows with every change of holder (not with an extension).
/// </summary>
public sealed record Lease(ulong Holder, HlcTimestamp Start, HlcTimestamp Expiration, ulong Sequence)
{
    public static readonly Lease None = new(0, HlcTimestamp.Zero, HlcTimestamp.Zero, 0);

    /// <summary>True if <paramref name="holder"/> may serve at <paramref name="now"/> (its clock) under this lease.</summary>
    public bool CanServe(ulong holder, HlcTimestamp now, TimeSpan maxOffset) =>
        Holder == holder && holder != 0 && now.CompareTo(Start) >= 0 && now.Add(maxOffset).CompareTo(Expiration) < 0;

    public byte[] Encode() => new ByteWriter().U64(Holder).Ts(Start).Ts(Expiration).U64(Sequence).ToArray();

    public static Lease Decode(ReadOnlySpan<byte> data)
    {
        var r = new ByteReader(data);
        return new Lease(r.U64(), r.Ts(), r.Ts(), r.U64());
    }
}

/// <summary>One MVCC write in a replicated write command.</summary>
public readonly record struct MvccWrite(byte[] Key, HlcTimestamp Timestamp, byte[]? Value);

/// <summary>
/// A command replicated through a range's Raft log. Commands are evaluated at the leaseholder (timestamps chosen,
/// values computed) and replicated as their effects, so every replica applies exactly the same writes.
/// </summary>
public abstract record RangeCommand
{
    private const byte KindWrite = 1;
    private const byte KindLease = 2;
    private const byte KindEval = 3;

    public abstract byte[] Encode();

    public static RangeCommand Decode(ReadOnlySpan<byte> data)
    {
        var r = new ByteReader(data);
        switch (r.U8())
        {
            case KindWrite:
                var seq = r.U64();
                var n = r.U64();
                if (n > 1_000_000)
                {
                    throw new FormatException("write command: too many writes");
                }

                var writes = new MvccWrite[n];
                for (var i = 0; i < writes.Length; i++)
                {
                    writes[i] = new MvccWrite(r.Bytes(), r.Ts(), r.OptBytes());
                }

                return new WriteCommand(seq, writes);
            case KindLease:
                var lease = new Lease(r.U64(), r.Ts(), r.Ts(), r.U64());
                var prev = r.U64();
                var transfer = r.U8() != 0;
                return new LeaseCommand(lease, prev, transfer);
            case KindEval:
                var leaseSeq = r.U64();
                var count = r.U64();
                if (count > 1_000_000)
                {
                    throw new FormatException("eval command: too many ops");
                }

                var ops = new EngineOp[count];
                for (var i = 0; i < ops.Length; i++)
                {
                    var kind = r.U8();
                    if (kind > 1)
                    {
                        throw new FormatException("eval command: unknown op");
                    }

                    ops[i] = new EngineOp(r.Bytes(), kind == 0 ? r.Bytes() : null);
                }

                return new EvalCommand(leaseSeq, ops);
            default:
                throw new FormatException("range command: unknown kind");
        }
    }

    /// <summary>Writes evaluated under the lease with sequence <see cref="LeaseSequence"/>; applied only if that
    /// lease is still in force when the command applies (a deposed leaseholder's late writes are rejected).</summary>
    public sealed record WriteCommand(ulong LeaseSequence, MvccWrite[] Writes) : RangeCommand
    {
        public override byte[] Encode()
        {
            var w = new ByteWriter().U8(KindWrite).U64(LeaseSequence).U64((ulong)Writes.Length);
            foreach (var x in Writes)
            {
                w.Bytes(x.Key).Ts(x.Timestamp).OptBytes(x.Value);
            }

            return w.ToArray();
        }
    }

    /// <summary>
    /// The effects of a request evaluated at the leaseholder (proposer-evaluated, as CockroachDB does): engine puts and
    /// deletes of MVCC keys (intents, versions) and transaction records of the range's span, computed against the
    /// leaseholder's state under latches. Applied only if the lease it was evaluated under is still in force and every
    /// key lies in the range's spans; then every replica writes exactly these bytes.
    /// </summary>
    public sealed record EvalCommand(ulong LeaseSequence, EngineOp[] Ops) : RangeCommand
    {
        public override byte[] Encode()
        {
            var w = new ByteWriter().U8(KindEval).U64(LeaseSequence).U64((ulong)Ops.Length);
            foreach (var op in Ops)
            {
                if (op.Value is { } v)
                {
                    w.U8(0).Bytes(op.Key).Bytes(v);
                }
                else
                {
                    w.U8(1).Bytes(op.Key);
                }
            }

            return w.ToArray();
        }

        /// <summary>The ops of a write batch of puts and deletes (no range deletions).</summary>
        public static EngineOp[] FromBatch(Canopy.Storage.WriteBatch batch) =>
            batch.Ops.Select(o => o.Kind switch
            {
                Canopy.Storage.WriteBatch.OpKind.Put => new EngineOp(o.Key, o.Value),
                Canopy.Storage.WriteBatch.OpKind.Delete => new EngineOp(o.Key, null),
                _ => throw new ArgumentException("an eval command cannot carry a range deletion"),
            }).ToArray();
    }

    /// <summary>
    /// A lease request (or, with <see cref="Transfer"/>, a transfer proposed by the current holder). Valid only if the
    /// lease in force still has sequence <see cref="PreviousSequence"/>; an extension by the same holder keeps the
    /// sequence, a new holder needs the previous lease expired before its start (or a transfer).
    /// </summary>
    public sealed record LeaseCommand(Lease Lease, ulong PreviousSequence, bool Transfer) : RangeCommand
    {
        public override byte[] Encode() =>
            new ByteWriter().U8(KindLease).U64(Lease.Holder).Ts(Lease.Start).Ts(Lease.Expiration).U64(Lease.Sequence)
                .U64(PreviousSequence).U8(Transfer ? (byte)1 : (byte)0).ToArray();
    }
}

/// <summary>One engine write of an <see cref="RangeCommand.EvalCommand"/>: a put, or a delete when <see cref="Value"/> is null.</summary>
public readonly record struct EngineOp(byte[] Key, byte[]? Value);

/// <summary>What applying a command did (reported to the proposer).</summary>
public enum ApplyResult
{
    Applied,

    /// <summary>The lease changed since the command was evaluated: nothing was written; retry at the new leaseholder.</summary>
    LeaseChanged,

    /// <summary>The command was invalid (e.g. a key outside the range): nothing was written.</summary>
    Rejected,
}

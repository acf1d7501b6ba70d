using System.Buffers.Binary;
using Canopy.Clock;

namespace Canopy.Txn;

/// <summary>
/// Priority classes: a high-priority transaction never waits for a normal or low one (it aborts or pushes it); a
/// low-priority one never makes others wait; normal ones wait for each other (and deadlocks pick the lower value).
/// </summary>
public static class TxnPriority
{
    public const uint Low = 1;

    public const uint High = uint.MaxValue;

    /// <summary>A non-transactional request pushes as a normal transaction would.</summary>
    public const uint Normal = uint.MaxValue / 2;

    /// <summary>A random normal priority (strictly between low and high).</summary>
    public static uint RandomNormal(Random random) => (uint)random.NextInt64(Low + 1, High);
}

/// <summary>The states of a transaction record (DESIGN §8). COMMITTED and ABORTED are final.</summary>
public enum TxnStatus : byte
{
    Pending = 0,
    Staging = 1,
    Committed = 2,
    Aborted = 3,
}

/// <summary>
/// What every request of a transaction carries about it: identity, epoch, timestamps, priority, anchor.
/// <see cref="ReadTimestamp"/> is where it reads; <see cref="WriteTimestamp"/> where it writes and (at least) commits;
/// <see cref="MinTimestamp"/> its start (uncertainty limit = start + max offset; abandonment of a record-less txn).
/// </summary>
public sealed record TxnMeta(
    Guid Id,
    int Epoch,
    HlcTimestamp ReadTimestamp,
    HlcTimestamp WriteTimestamp,
    HlcTimestamp MinTimestamp,
    uint Priority,
    byte[] Anchor)
{
    public override string ToString() => $"txn {Id.ToString()[..8]} e{Epoch} r{ReadTimestamp} w{WriteTimestamp} p{Priority}";
}

/// <summary>
/// A transaction record, stored at <see cref="Canopy.Mvcc.TxnKeys.Record"/> of its anchor. Transitions (txn-pitfalls 2):
/// PENDING → STAGING → COMMITTED | ABORTED, PENDING → COMMITTED | ABORTED; a STAGING record is re-staged only at a
/// higher (or equal) timestamp or epoch; epoch and timestamp never decrease; COMMITTED and ABORTED never change.
/// </summary>
/// <param name="InFlight">STAGING: the writes (keys) that must all be found as intents of <see cref="Epoch"/> at or below
/// <see cref="WriteTimestamp"/> for the transaction to be implicitly committed.</param>
/// <param name="LockKeys">Every key the transaction wrote (any epoch): what resolution must visit.</param>
public sealed record TxnRecord(
    Guid Id,
    TxnStatus Status,
    int Epoch,
    HlcTimestamp WriteTimestamp,
    HlcTimestamp MinTimestamp,
    uint Priority,
    HlcTimestamp LastHeartbeat,
    IReadOnlyList<byte[]> InFlight,
    IReadOnlyList<byte[]> LockKeys)
{
    private const byte Format = 1;

    public bool IsFinal => Status is TxnStatus.Committed or TxnStatus.Aborted;

    public byte[] Encode()
    {
        var size = 1 + 16 + 1 + 4 + (3 * HlcTimestamp.EncodedLength) + 4 + 4 + 4;
        size += InFlight.Sum(k => 4 + k.Length) + LockKeys.Sum(k => 4 + k.Length);
        var b = new byte[size];
        var p = 0;
        b[p++] = Format;
        Id.TryWriteBytes(b.AsSpan(p, 16), bigEndian: true, out _);
        p += 16;
        b[p++] = (byte)Status;
        BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(p), Epoch);
        p += 4;
        foreach (var ts in (ReadOnlySpan<HlcTimestamp>)[WriteTimestamp, MinTimestamp, LastHeartbeat])
        {
            ts.EncodeTo(b.AsSpan(p));
            p += HlcTimestamp.EncodedLength;
        }

        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(p), Priority);
        p += 4;
        foreach (var list in new[] { InFlight, LockKeys })
        {
            BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(p), list.Count);
            p += 4;
            foreach (var k in list)
            {
                BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(p), k.Length);
                p += 4;
                k.CopyTo(b.AsSpan(p));
                p += k.Length;
            }
        }

        return b;
    }

    /// <exception cref="FormatException">Not an encoded record.</exception>
    public static TxnRecord Decode(ReadOnlySpan<byte> b)
    {
        try
        {
            var p = 0;
            if (b[p++] != Format)
            {
                throw new FormatException("transaction record: unknown format");
            }

            var id = new Guid(b.Slice(p, 16), bigEndian: true);
            p += 16;
            var status = (TxnStatus)b[p++];
            if (status > TxnStatus.Aborted)
            {
                throw new FormatException("transaction record: unknown status");
            }

            var epoch = BinaryPrimitives.ReadInt32BigEndian(b[p..]);
            p += 4;
            var ts = new HlcTimestamp[3];
            for (var i = 0; i < 3; i++)
            {
                ts[i] = HlcTimestamp.Decode(b.Slice(p, HlcTimestamp.EncodedLength));
                p += HlcTimestamp.EncodedLength;
            }

            var priority = BinaryPrimitives.ReadUInt32BigEndian(b[p..]);
            p += 4;
            var lists = new List<byte[]>[2];
            for (var l = 0; l < 2; l++)
            {
                var n = BinaryPrimitives.ReadInt32BigEndian(b[p..]);
                p += 4;
                if (n < 0 || n > b.Length)
                {
                    throw new FormatException("transaction record: bad key count");
                }

                lists[l] = new List<byte[]>(n);
                for (var i = 0; i < n; i++)
                {
                    var len = BinaryPrimitives.ReadInt32BigEndian(b[p..]);
                    p += 4;
                    if (len < 0 || p + len > b.Length)
                    {
                        throw new FormatException("transaction record: bad key length");
                    }

                    lists[l].Add(b.Slice(p, len).ToArray());
                    p += len;
                }
            }

            return new TxnRecord(id, status, epoch, ts[0], ts[1], priority, ts[2], lists[0], lists[1]);
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new FormatException("transaction record: truncated", e);
        }
    }
}

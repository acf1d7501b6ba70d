using System.Buffers.Binary;

namespace Canopy.Mvcc;

/// <summary>
/// Range-local keys addressed by range id (DESIGN §4): the per-range state that moves with a range as one unit
/// (snapshot, replica removal). Key builders only; the layers that own each record define its value.
/// <code>
///   0x01 'r' rangeId(8, big-endian) 'a'               applied state (applied Raft index, stats)
///   0x01 'r' rangeId 'd'                              range descriptor (span, replicas, generation)
///   0x01 'r' rangeId 'g'                              GC threshold: reads below it are refused
///   0x01 'r' rangeId 'l'                              lease
///   0x01 'r' rangeId 'x' txnId(16, RFC 4122 order)    abort span entry of an aborted transaction (txn-pitfalls 11)
/// </code>
/// Guarantees:
/// - All keys of one range lie in [<see cref="Prefix"/>, <see cref="End"/>), and the spans of different ranges are
///   disjoint and ordered by range id, so a range's state is one contiguous span to copy or delete.
/// - They share the range-local prefix 0x01 with <c>Canopy.Replication.MultiRaft.RaftStorage</c> ('g', 'd', 'x' as the
///   second byte) without overlapping it ('r'), and sort before system keys (0x02) and user data (0x10).
/// - Transaction records are not here: they live with their anchor key (DESIGN §2), so they follow splits.
/// </summary>
public static class RangeKeys
{
    /// <summary>First byte of every range-local key (shared with the Raft storage).</summary>
    public const byte LocalPrefix = 0x01;

    /// <summary>Second byte of the range-id-addressed keys defined here.</summary>
    public const byte RangeIdMarker = (byte)'r';

    private const byte AppliedStateSuffix = (byte)'a';
    private const byte DescriptorSuffix = (byte)'d';
    private const byte GcThresholdSuffix = (byte)'g';
    private const byte LeaseSuffix = (byte)'l';
    private const byte AbortSpanSuffix = (byte)'x';

    /// <summary>0x01 'r' rangeId: the prefix of (and inclusive lower bound for) every key of the range.</summary>
    public static byte[] Prefix(ulong rangeId)
    {
        var key = new byte[10];
        key[0] = LocalPrefix;
        key[1] = RangeIdMarker;
        BinaryPrimitives.WriteUInt64BigEndian(key.AsSpan(2), rangeId);
        return key;
    }

    /// <summary>The first key after every key of the range: the exclusive upper bound of its span.</summary>
    public static byte[] End(ulong rangeId)
    {
        if (rangeId < ulong.MaxValue)
        {
            return Prefix(rangeId + 1);
        }

        return [LocalPrefix, RangeIdMarker + 1];
    }

    /// <summary>The applied state of the range.</summary>
    public static byte[] AppliedState(ulong rangeId) => WithSuffix(rangeId, AppliedStateSuffix, 0);

    /// <summary>The range's lease.</summary>
    public static byte[] Lease(ulong rangeId) => WithSuffix(rangeId, LeaseSuffix, 0);

    /// <summary>The range's own copy of its descriptor.</summary>
    public static byte[] RangeDescriptor(ulong rangeId) => WithSuffix(rangeId, DescriptorSuffix, 0);

    /// <summary>The range's GC threshold.</summary>
    public static byte[] GcThreshold(ulong rangeId) => WithSuffix(rangeId, GcThresholdSuffix, 0);

    /// <summary>The abort span entry of <paramref name="txnId"/> on the range.</summary>
    public static byte[] AbortSpan(ulong rangeId, Guid txnId)
    {
        var key = WithSuffix(rangeId, AbortSpanSuffix, 16);
        txnId.TryWriteBytes(key.AsSpan(11), bigEndian: true, out _);
        return key;
    }

    /// <summary>The prefix of every abort span entry of the range.</summary>
    public static byte[] AbortSpanPrefix(ulong rangeId) => WithSuffix(rangeId, AbortSpanSuffix, 0);

    private static byte[] WithSuffix(ulong rangeId, byte suffix, int extra)
    {
        var key = new byte[11 + extra];
        Prefix(rangeId).CopyTo(key, 0);
        key[10] = suffix;
        return key;
    }
}

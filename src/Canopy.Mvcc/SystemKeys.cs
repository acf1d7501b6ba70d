using System.Buffers.Binary;

namespace Canopy.Mvcc;

/// <summary>
/// Cluster-wide system keys (DESIGN §4), prefix 0x02: after the range-local keys (0x01), before user data (0x10).
/// <code>
///   0x02 'l' nodeId(8, big-endian)   liveness record of a server
///   0x02 'm' ‖ endKey                addressing record (descriptor) of the range whose user keys end at endKey (exclusive)
///   0x02 'n'                         addressing record of the last range (no end key)
/// </code>
/// Addressing (meta2-style): a range [start, end) is recorded under its end key, so the range holding user key k is the
/// first record whose end key is greater than k: scan <see cref="RangeLookupSpan"/>(k) and take the first entry. The
/// last range's record sits at 0x02 'n', after every 0x02 'm' record, so the lookup always ends on a range. End keys
/// are user keys (raw bytes, compared as unsigned bytes, as in <see cref="MvccKeys"/>).
///
/// Guarantees: builders only (no logic); every key lies in [<see cref="SpanStart"/>, <see cref="SpanEnd"/>) = [0x02, 0x03);
/// for user keys a &lt; b, <c>RangeDescriptor(a) &lt; RangeDescriptor(b) &lt; RangeDescriptor(null)</c>.
/// These are plain engine keys, not MVCC versions.
/// </summary>
public static class SystemKeys
{
    /// <summary>First byte of every system key.</summary>
    public const byte Prefix = 0x02;

    private const byte LivenessMarker = (byte)'l';
    private const byte MetaMarker = (byte)'m';
    private const byte LastRangeMarker = (byte)'n';

    /// <summary>Inclusive lower bound of the system keys.</summary>
    public static byte[] SpanStart => [Prefix];

    /// <summary>Exclusive upper bound of the system keys.</summary>
    public static byte[] SpanEnd => [Prefix + 1];

    /// <summary>Inclusive lower bound of every range addressing record.</summary>
    public static byte[] MetaSpanStart => [Prefix, MetaMarker];

    /// <summary>Exclusive upper bound of every range addressing record (just after the last range's record).</summary>
    public static byte[] MetaSpanEnd => [Prefix, LastRangeMarker, 0x00];

    /// <summary>The addressing record of the range ending at <paramref name="endKey"/> (exclusive); null for the last range.</summary>
    public static byte[] RangeDescriptor(byte[]? endKey)
    {
        if (endKey is null)
        {
            return [Prefix, LastRangeMarker];
        }

        MvccKeys.ValidateUserKey(endKey, nameof(endKey));
        var key = new byte[2 + endKey.Length];
        key[0] = Prefix;
        key[1] = MetaMarker;
        endKey.CopyTo(key, 2);
        return key;
    }

    /// <summary>
    /// The span whose first record addresses the range holding <paramref name="userKey"/>: from just after
    /// 0x02 'm' ‖ userKey (end keys are exclusive, so a range ending at k does not hold k) to <see cref="MetaSpanEnd"/>.
    /// </summary>
    public static (byte[] Lower, byte[] Upper) RangeLookupSpan(byte[] userKey)
    {
        ArgumentNullException.ThrowIfNull(userKey);
        MvccKeys.ValidateUserKey(userKey, nameof(userKey));
        var lower = new byte[3 + userKey.Length];
        lower[0] = Prefix;
        lower[1] = MetaMarker;
        userKey.CopyTo(lower, 2); // the trailing 0x00 makes it the immediate successor of 0x02 'm' ‖ userKey
        return (lower, MetaSpanEnd);
    }

    /// <summary>The liveness record of server <paramref name="nodeId"/>.</summary>
    public static byte[] NodeLiveness(ulong nodeId)
    {
        var key = new byte[10];
        key[0] = Prefix;
        key[1] = LivenessMarker;
        BinaryPrimitives.WriteUInt64BigEndian(key.AsSpan(2), nodeId);
        return key;
    }
}

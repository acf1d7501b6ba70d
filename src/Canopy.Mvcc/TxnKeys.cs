namespace Canopy.Mvcc;

/// <summary>
/// The storage-engine keys of transaction records (DESIGN §8). A record lives on the range of its transaction's anchor
/// key, next to nothing else, under a range-local key derived from the anchor, so a record moves with its anchor's
/// range (snapshots, future splits):
/// <code>
///   record key   0x01 't' ‖ escaped(anchor) ‖ 0x00 0x00 ‖ txn id (16, RFC 4122 byte order)
/// </code>
/// The records of the anchors in [start, end) form the span [<see cref="Span"/>): the same escaping as
/// <see cref="MvccKeys"/>, so the order of anchors is kept.
/// </summary>
public static class TxnKeys
{
    /// <summary>Second byte of every record key.</summary>
    public const byte Marker = (byte)'t';

    /// <summary>The record key of transaction <paramref name="txnId"/> anchored at <paramref name="anchor"/>.</summary>
    public static byte[] Record(ReadOnlySpan<byte> anchor, Guid txnId)
    {
        var user = MvccKeys.IntentKey(anchor); // 0x10 ‖ escaped ‖ 0x00 0x00
        var key = new byte[2 + (user.Length - 1) + 16];
        key[0] = RangeKeys.LocalPrefix;
        key[1] = Marker;
        user.AsSpan(1).CopyTo(key.AsSpan(2));
        txnId.TryWriteBytes(key.AsSpan(key.Length - 16), bigEndian: true, out _);
        return key;
    }

    /// <summary>The engine-key span of the records anchored in [<paramref name="startKey"/>, <paramref name="endKey"/>) (null: to the end).</summary>
    public static (byte[] Lower, byte[] Upper) Span(ReadOnlySpan<byte> startKey, byte[]? endKey)
    {
        var (lo, hi) = MvccKeys.Span(startKey, endKey);
        return (Rebase(lo), endKey is null ? [RangeKeys.LocalPrefix, Marker + 1] : Rebase(hi));
    }

    /// <summary>True if <paramref name="engineKey"/> is a record key.</summary>
    public static bool IsRecordKey(ReadOnlySpan<byte> engineKey) =>
        engineKey.Length >= 2 + 16 && engineKey[0] == RangeKeys.LocalPrefix && engineKey[1] == Marker;

    private static byte[] Rebase(byte[] mvccKey)
    {
        var key = new byte[mvccKey.Length + 1];
        key[0] = RangeKeys.LocalPrefix;
        key[1] = Marker;
        mvccKey.AsSpan(1).CopyTo(key.AsSpan(2));
        return key;
    }
}

using System.Buffers.Binary;
using Canopy.Clock;

namespace Canopy.Mvcc;

/// <summary>
/// A provisional write of an uncommitted transaction (DESIGN §4, §8), stored under the intent key of its user key
/// (<see cref="MvccKeys.IntentKey"/>), which sorts before every committed version of that key. At most one intent per
/// user key exists at a time.
///
/// Encoding (<see cref="Encode"/>/<see cref="Decode"/>), all integers big-endian:
/// <code>
///   0x01 (format) ‖ txn id (16, RFC 4122 byte order) ‖ epoch (4) ‖ write timestamp (12) ‖ kind (0x00 deletion | 0x01 value) ‖ value bytes
///   0x02 (format) ‖ txn id ‖ epoch ‖ write timestamp ‖ min timestamp (12) ‖ priority (4) ‖ sequence (4) ‖ anchor length (2) ‖ anchor ‖ kind ‖ value bytes
/// </code>
/// Format 0x02 carries what a conflicting reader or writer needs to find and push the transaction without asking
/// anyone: the anchor key (its record lives on the anchor's range), its start timestamp and its priority.
/// Guarantees: the encoding round-trips exactly; <see cref="Decode"/> rejects anything malformed with a
/// <see cref="FormatException"/>; equality compares the value bytes by content; the epoch is non-negative.
/// </summary>
/// <param name="TxnId">The writing transaction.</param>
/// <param name="Epoch">The transaction's epoch when it wrote this (a restart increments it).</param>
/// <param name="WriteTimestamp">The timestamp the transaction wrote at; it commits at this timestamp or above.</param>
/// <param name="Value">The provisional value, or null for a provisional deletion.</param>
public sealed record MvccIntent(Guid TxnId, int Epoch, HlcTimestamp WriteTimestamp, byte[]? Value)
{
    private const byte Format = 0x01;
    private const byte FormatWithMeta = 0x02;
    private const int HeaderLength = 1 + 16 + 4 + HlcTimestamp.EncodedLength + 1;

    /// <summary>The transaction's epoch; non-negative.</summary>
    public int Epoch { get; init; } = Epoch >= 0
        ? Epoch
        : throw new ArgumentOutOfRangeException(nameof(Epoch), Epoch, "a transaction epoch cannot be negative");

    /// <summary>True when the intent deletes the key.</summary>
    public bool IsDeletion => Value is null;

    /// <summary>The key whose range holds the transaction's record (empty: unknown, an old-format intent).</summary>
    public byte[] Anchor { get; init; } = [];

    /// <summary>The transaction's start timestamp (a pusher that finds no record uses it to judge abandonment).</summary>
    public HlcTimestamp MinTimestamp { get; init; }

    /// <summary>The transaction's priority (higher wins a deadlock).</summary>
    public uint Priority { get; init; }

    /// <summary>The write's sequence number within its transaction and epoch (later writes of a key have higher ones).</summary>
    public int Sequence { get; init; }

    /// <summary>Reads an intent written by <see cref="Encode"/>.</summary>
    /// <exception cref="FormatException">The bytes are not an encoded intent.</exception>
    public static MvccIntent Decode(ReadOnlySpan<byte> encoded)
    {
        if (encoded.Length < HeaderLength || (encoded[0] != Format && encoded[0] != FormatWithMeta))
        {
            throw new FormatException($"corrupt MVCC intent ({encoded.Length} bytes): expected format 0x{Format:X2} or 0x{FormatWithMeta:X2} and at least {HeaderLength} bytes");
        }

        var txnId = new Guid(encoded.Slice(1, 16), bigEndian: true);
        var epoch = BinaryPrimitives.ReadInt32BigEndian(encoded[17..]);
        if (epoch < 0)
        {
            throw new FormatException($"corrupt MVCC intent of txn {txnId}: negative epoch {epoch}");
        }

        var timestamp = HlcTimestamp.Decode(encoded.Slice(21, HlcTimestamp.EncodedLength));
        var pos = 21 + HlcTimestamp.EncodedLength;
        var minTs = HlcTimestamp.Zero;
        uint priority = 0;
        var sequence = 0;
        byte[] anchor = [];
        if (encoded[0] == FormatWithMeta)
        {
            if (encoded.Length < pos + HlcTimestamp.EncodedLength + 4 + 4 + 2 + 1)
            {
                throw new FormatException($"corrupt MVCC intent of txn {txnId}: too short for its metadata");
            }

            minTs = HlcTimestamp.Decode(encoded.Slice(pos, HlcTimestamp.EncodedLength));
            pos += HlcTimestamp.EncodedLength;
            priority = BinaryPrimitives.ReadUInt32BigEndian(encoded[pos..]);
            pos += 4;
            sequence = BinaryPrimitives.ReadInt32BigEndian(encoded[pos..]);
            pos += 4;
            int anchorLength = BinaryPrimitives.ReadUInt16BigEndian(encoded[pos..]);
            pos += 2;
            if (encoded.Length < pos + anchorLength + 1)
            {
                throw new FormatException($"corrupt MVCC intent of txn {txnId}: anchor of {anchorLength} bytes does not fit");
            }

            anchor = encoded.Slice(pos, anchorLength).ToArray();
            pos += anchorLength;
        }

        var kind = encoded[pos];
        var rest = encoded[(pos + 1)..];
        var intent = kind switch
        {
            0x00 when rest.IsEmpty => new MvccIntent(txnId, epoch, timestamp, null),
            0x01 => new MvccIntent(txnId, epoch, timestamp, rest.ToArray()),
            _ => throw new FormatException($"corrupt MVCC intent of txn {txnId}: kind 0x{kind:X2} with {rest.Length} value bytes"),
        };
        return encoded[0] == FormatWithMeta ? intent with { Anchor = anchor, MinTimestamp = minTs, Priority = priority, Sequence = sequence } : intent;
    }

    /// <summary>The stored form (format 0x02 when an anchor is set, else 0x01).</summary>
    public byte[] Encode()
    {
        var meta = Anchor.Length > 0;
        var metaLength = meta ? HlcTimestamp.EncodedLength + 4 + 4 + 2 + Anchor.Length : 0;
        var bytes = new byte[HeaderLength + metaLength + (Value?.Length ?? 0)];
        bytes[0] = meta ? FormatWithMeta : Format;
        TxnId.TryWriteBytes(bytes.AsSpan(1, 16), bigEndian: true, out _);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(17), Epoch);
        WriteTimestamp.EncodeTo(bytes.AsSpan(21));
        var pos = 21 + HlcTimestamp.EncodedLength;
        if (meta)
        {
            MinTimestamp.EncodeTo(bytes.AsSpan(pos));
            pos += HlcTimestamp.EncodedLength;
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(pos), Priority);
            pos += 4;
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(pos), Sequence);
            pos += 4;
            BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(pos), checked((ushort)Anchor.Length));
            pos += 2;
            Anchor.CopyTo(bytes.AsSpan(pos));
            pos += Anchor.Length;
        }

        bytes[pos] = Value is null ? (byte)0x00 : (byte)0x01;
        Value?.CopyTo(bytes.AsSpan(pos + 1));
        return bytes;
    }

    /// <inheritdoc/>
    public bool Equals(MvccIntent? other) =>
        other is not null
        && TxnId == other.TxnId
        && Epoch == other.Epoch
        && WriteTimestamp == other.WriteTimestamp
        && (Value is null ? other.Value is null : other.Value is not null && Value.AsSpan().SequenceEqual(other.Value));

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(TxnId, Epoch, WriteTimestamp, Value?.Length ?? -1);

    /// <inheritdoc/>
    public override string ToString() =>
        $"intent of txn {TxnId} epoch {Epoch} at {WriteTimestamp}: {(Value is null ? "delete" : Convert.ToHexString(Value))}";
}

/// <summary>The reading or writing transaction, as MVCC needs it: its id and current epoch.</summary>
public readonly record struct MvccTxn(Guid Id, int Epoch);

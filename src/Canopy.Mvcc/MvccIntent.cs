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
/// </code>
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
    private const int HeaderLength = 1 + 16 + 4 + HlcTimestamp.EncodedLength + 1;

    /// <summary>The transaction's epoch; non-negative.</summary>
    public int Epoch { get; init; } = Epoch >= 0
        ? Epoch
        : throw new ArgumentOutOfRangeException(nameof(Epoch), Epoch, "a transaction epoch cannot be negative");

    /// <summary>True when the intent deletes the key.</summary>
    public bool IsDeletion => Value is null;

    /// <summary>Reads an intent written by <see cref="Encode"/>.</summary>
    /// <exception cref="FormatException">The bytes are not an encoded intent.</exception>
    public static MvccIntent Decode(ReadOnlySpan<byte> encoded)
    {
        if (encoded.Length < HeaderLength || encoded[0] != Format)
        {
            throw new FormatException($"corrupt MVCC intent ({encoded.Length} bytes): expected format 0x{Format:X2} and at least {HeaderLength} bytes");
        }

        var txnId = new Guid(encoded.Slice(1, 16), bigEndian: true);
        var epoch = BinaryPrimitives.ReadInt32BigEndian(encoded[17..]);
        if (epoch < 0)
        {
            throw new FormatException($"corrupt MVCC intent of txn {txnId}: negative epoch {epoch}");
        }

        var timestamp = HlcTimestamp.Decode(encoded.Slice(21, HlcTimestamp.EncodedLength));
        var kind = encoded[HeaderLength - 1];
        return kind switch
        {
            0x00 when encoded.Length == HeaderLength => new MvccIntent(txnId, epoch, timestamp, null),
            0x01 => new MvccIntent(txnId, epoch, timestamp, encoded[HeaderLength..].ToArray()),
            _ => throw new FormatException($"corrupt MVCC intent of txn {txnId}: kind 0x{kind:X2} with {encoded.Length - HeaderLength} value bytes"),
        };
    }

    /// <summary>The stored form.</summary>
    public byte[] Encode()
    {
        var bytes = new byte[HeaderLength + (Value?.Length ?? 0)];
        bytes[0] = Format;
        TxnId.TryWriteBytes(bytes.AsSpan(1, 16), bigEndian: true, out _);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(17), Epoch);
        WriteTimestamp.EncodeTo(bytes.AsSpan(21));
        bytes[HeaderLength - 1] = Value is null ? (byte)0x00 : (byte)0x01;
        Value?.CopyTo(bytes.AsSpan(HeaderLength));
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

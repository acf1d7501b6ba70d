using System.Buffers.Binary;
using System.Globalization;

namespace Canopy.Clock;

/// <summary>
/// A hybrid logical clock timestamp (DESIGN §5): wall-clock nanoseconds since the Unix epoch plus a logical counter
/// that orders events within one wall-clock value.
///
/// Guarantees:
/// - Both parts are non-negative (the constructor rejects anything else), so <c>default</c> is <see cref="Zero"/>.
/// - Total order: by <see cref="WallNanos"/>, then by <see cref="Logical"/>. <see cref="Next"/> and <see cref="Prev"/> are
///   the exact successor and predecessor in that order (the logical part carries into the wall part at its limits).
/// - Text form <c>wall.logical</c> (e.g. <c>1732520000123456789.3</c>, invariant digits only); <see cref="Parse"/> accepts
///   exactly what <see cref="ToString"/> produces and round-trips it.
/// - Binary form: <see cref="EncodedLength"/> (12) bytes, wall then logical, both big-endian. Comparing two encodings
///   as unsigned bytes gives the same order as comparing the timestamps, so encodings can sit inside storage keys.
/// </summary>
public readonly record struct HlcTimestamp(long WallNanos, int Logical) : IComparable<HlcTimestamp>
{
    /// <summary>Bytes written by <see cref="EncodeTo"/>.</summary>
    public const int EncodedLength = 12;

    /// <summary>The smallest timestamp (0.0); also <c>default</c>. Used as "no timestamp".</summary>
    public static readonly HlcTimestamp Zero;

    /// <summary>The largest timestamp.</summary>
    public static readonly HlcTimestamp MaxValue = new(long.MaxValue, int.MaxValue);

    /// <summary>Nanoseconds since the Unix epoch (1970-01-01T00:00Z); non-negative.</summary>
    public long WallNanos { get; } = WallNanos >= 0
        ? WallNanos
        : throw new ArgumentOutOfRangeException(nameof(WallNanos), WallNanos, "an HLC wall time is nanoseconds since the Unix epoch and cannot be negative");

    /// <summary>The logical counter within <see cref="WallNanos"/>; non-negative.</summary>
    public int Logical { get; } = Logical >= 0
        ? Logical
        : throw new ArgumentOutOfRangeException(nameof(Logical), Logical, "an HLC logical counter cannot be negative");

    /// <summary>True for <see cref="Zero"/>.</summary>
    public bool IsZero => WallNanos == 0 && Logical == 0;

    public static bool operator <(HlcTimestamp left, HlcTimestamp right) => left.CompareTo(right) < 0;

    public static bool operator >(HlcTimestamp left, HlcTimestamp right) => left.CompareTo(right) > 0;

    public static bool operator <=(HlcTimestamp left, HlcTimestamp right) => left.CompareTo(right) <= 0;

    public static bool operator >=(HlcTimestamp left, HlcTimestamp right) => left.CompareTo(right) >= 0;

    /// <summary>The larger of two timestamps.</summary>
    public static HlcTimestamp Max(HlcTimestamp a, HlcTimestamp b) => a >= b ? a : b;

    /// <summary>The smaller of two timestamps.</summary>
    public static HlcTimestamp Min(HlcTimestamp a, HlcTimestamp b) => a <= b ? a : b;

    /// <summary>Reads a timestamp written by <see cref="EncodeTo"/>: exactly <see cref="EncodedLength"/> bytes.</summary>
    /// <exception cref="FormatException">The length is wrong, or a part would be negative.</exception>
    public static HlcTimestamp Decode(ReadOnlySpan<byte> source)
    {
        if (source.Length != EncodedLength)
        {
            throw new FormatException($"an encoded HLC timestamp is {EncodedLength} bytes, got {source.Length}");
        }

        var wall = BinaryPrimitives.ReadInt64BigEndian(source);
        var logical = BinaryPrimitives.ReadInt32BigEndian(source[8..]);
        if (wall < 0 || logical < 0)
        {
            throw new FormatException($"encoded HLC timestamp {Convert.ToHexString(source)} has a negative part");
        }

        return new HlcTimestamp(wall, logical);
    }

    /// <summary>Parses the <c>wall.logical</c> form written by <see cref="ToString"/>.</summary>
    /// <exception cref="FormatException">The text is not two runs of decimal digits joined by one '.', or a part is out of range.</exception>
    public static HlcTimestamp Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return TryParse(text, out var result)
            ? result
            : throw new FormatException($"'{text}' is not an HLC timestamp: expected wall.logical, e.g. 1732520000123456789.3");
    }

    /// <summary>Parses the <c>wall.logical</c> form; false (and <see cref="Zero"/>) if <paramref name="text"/> is not one.</summary>
    public static bool TryParse(string? text, out HlcTimestamp result)
    {
        result = Zero;
        if (text is null)
        {
            return false;
        }

        var dot = text.IndexOf('.', StringComparison.Ordinal);
        if (dot <= 0 || dot == text.Length - 1)
        {
            return false;
        }

        // NumberStyles.None: digits only, no sign, whitespace or separators, so the form is canonical up to leading zeros.
        if (!long.TryParse(text.AsSpan(0, dot), NumberStyles.None, CultureInfo.InvariantCulture, out var wall)
            || !int.TryParse(text.AsSpan(dot + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var logical))
        {
            return false;
        }

        result = new HlcTimestamp(wall, logical);
        return true;
    }

    /// <inheritdoc/>
    public int CompareTo(HlcTimestamp other)
    {
        var c = WallNanos.CompareTo(other.WallNanos);
        return c != 0 ? c : Logical.CompareTo(other.Logical);
    }

    /// <summary>The next timestamp in the total order: logical + 1 (or the next wall nanosecond at logical 0 when the counter is full).</summary>
    /// <exception cref="InvalidOperationException">This is <see cref="MaxValue"/>.</exception>
    public HlcTimestamp Next()
    {
        if (Logical < int.MaxValue)
        {
            return new HlcTimestamp(WallNanos, Logical + 1);
        }

        return WallNanos < long.MaxValue
            ? new HlcTimestamp(WallNanos + 1, 0)
            : throw new InvalidOperationException("HlcTimestamp.MaxValue has no successor");
    }

    /// <summary>The previous timestamp in the total order: logical − 1 (or the previous wall nanosecond at the largest logical value when the counter is 0).</summary>
    /// <exception cref="InvalidOperationException">This is <see cref="Zero"/>.</exception>
    public HlcTimestamp Prev()
    {
        if (Logical > 0)
        {
            return new HlcTimestamp(WallNanos, Logical - 1);
        }

        return WallNanos > 0
            ? new HlcTimestamp(WallNanos - 1, int.MaxValue)
            : throw new InvalidOperationException("HlcTimestamp.Zero has no predecessor");
    }

    /// <summary>This timestamp moved by <paramref name="delta"/> on the wall part (nanosecond precision); the logical part is kept.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The result's wall part would be negative or overflow.</exception>
    public HlcTimestamp Add(TimeSpan delta)
    {
        var nanos = (Int128)delta.Ticks * 100;
        var wall = WallNanos + nanos;
        if (wall < 0 || wall > long.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(delta), delta, $"{this} + {delta} is outside the HLC wall-time range");
        }

        return new HlcTimestamp((long)wall, Logical);
    }

    /// <summary>Writes the 12-byte big-endian form (wall, then logical) into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <see cref="EncodedLength"/>.</exception>
    public void EncodeTo(Span<byte> destination)
    {
        if (destination.Length < EncodedLength)
        {
            throw new ArgumentException($"an encoded HLC timestamp needs {EncodedLength} bytes, the destination has {destination.Length}", nameof(destination));
        }

        BinaryPrimitives.WriteInt64BigEndian(destination, WallNanos);
        BinaryPrimitives.WriteInt32BigEndian(destination[8..], Logical);
    }

    /// <summary>The 12-byte encoding as a new array.</summary>
    public byte[] ToBytes()
    {
        var bytes = new byte[EncodedLength];
        EncodeTo(bytes);
        return bytes;
    }

    /// <summary><c>wall.logical</c>, e.g. <c>1732520000123456789.3</c>.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{WallNanos}.{Logical}");
}

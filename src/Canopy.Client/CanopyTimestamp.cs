namespace Canopy.Client;

using System.Globalization;

/// <summary>
/// A hybrid-logical-clock timestamp as the cluster reports it ("wall.logical": wall-clock nanoseconds since the Unix
/// epoch and a logical counter), ordered by wall time, then logical.
/// </summary>
public readonly record struct CanopyTimestamp(long WallNanos, int Logical) : IComparable<CanopyTimestamp>
{
    public static CanopyTimestamp Zero => default;

    public static CanopyTimestamp Parse(string text) =>
        TryParse(text, out var ts) ? ts : throw new FormatException($"'{text}' is not a timestamp (wall.logical)");

    public static bool TryParse(string? text, out CanopyTimestamp ts)
    {
        ts = default;
        if (text is null)
        {
            return false;
        }

        var dot = text.IndexOf('.', StringComparison.Ordinal);
        if (dot <= 0 ||
            !long.TryParse(text.AsSpan(0, dot), NumberStyles.None, CultureInfo.InvariantCulture, out var wall) ||
            !int.TryParse(text.AsSpan(dot + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var logical))
        {
            return false;
        }

        ts = new CanopyTimestamp(wall, logical);
        return true;
    }

    /// <summary>The wall-clock part as a time.</summary>
    public DateTimeOffset Wall => DateTimeOffset.FromUnixTimeMilliseconds(0).AddTicks(WallNanos / 100);

    public int CompareTo(CanopyTimestamp other) =>
        WallNanos != other.WallNanos ? WallNanos.CompareTo(other.WallNanos) : Logical.CompareTo(other.Logical);

    public static bool operator <(CanopyTimestamp a, CanopyTimestamp b) => a.CompareTo(b) < 0;

    public static bool operator >(CanopyTimestamp a, CanopyTimestamp b) => a.CompareTo(b) > 0;

    public static bool operator <=(CanopyTimestamp a, CanopyTimestamp b) => a.CompareTo(b) <= 0;

    public static bool operator >=(CanopyTimestamp a, CanopyTimestamp b) => a.CompareTo(b) >= 0;

    public static CanopyTimestamp Max(CanopyTimestamp a, CanopyTimestamp b) => a >= b ? a : b;

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{WallNanos}.{Logical}");
}

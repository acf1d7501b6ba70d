using System.Globalization;

namespace Canopy.Clock;

/// <summary>
/// A remote timestamp was rejected because its wall time is further ahead of our physical clock than the maximum
/// clock offset (DESIGN §5). The message says by how much, e.g. "remote clock is 740 ms ahead of ours, more than the
/// max offset 500 ms"; the clock that threw was not moved.
/// </summary>
public sealed class ClockOffsetException : Exception
{
    public ClockOffsetException()
        : base("remote clock is further ahead of ours than the max offset")
    {
    }

    public ClockOffsetException(string message)
        : base(message)
    {
    }

    public ClockOffsetException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The rejection of <paramref name="remote"/>, read when our physical clock said <paramref name="localPhysicalNanos"/>.</summary>
    public ClockOffsetException(HlcTimestamp remote, long localPhysicalNanos, TimeSpan maxOffset)
        : base(
            $"remote clock is {FormatMilliseconds(remote.WallNanos - localPhysicalNanos)} ahead of ours, " +
            $"more than the max offset {FormatMilliseconds(maxOffset.Ticks * 100)}")
    {
        Remote = remote;
        LocalPhysicalNanos = localPhysicalNanos;
        AheadNanos = remote.WallNanos - localPhysicalNanos;
        MaxOffset = maxOffset;
    }

    /// <summary>The rejected remote timestamp.</summary>
    public HlcTimestamp Remote { get; }

    /// <summary>Our physical clock (Unix nanoseconds) when the remote timestamp was checked.</summary>
    public long LocalPhysicalNanos { get; }

    /// <summary>How far the remote wall time was ahead of our physical clock, in nanoseconds.</summary>
    public long AheadNanos { get; }

    /// <summary>The maximum offset that was exceeded.</summary>
    public TimeSpan MaxOffset { get; }

    /// <summary>Nanoseconds as milliseconds with only the digits needed: 740000000 → "740 ms", 500000050 → "500.00005 ms".</summary>
    internal static string FormatMilliseconds(long nanos) =>
        string.Create(CultureInfo.InvariantCulture, $"{nanos / 1_000_000m:0.######} ms");
}

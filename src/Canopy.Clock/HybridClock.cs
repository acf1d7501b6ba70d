namespace Canopy.Clock;

/// <summary>
/// A hybrid logical clock (DESIGN §5) over an injected <see cref="TimeProvider"/>.
///
/// Guarantees:
/// - <see cref="Now"/> is strictly monotonic: every timestamp it (or <see cref="Update"/>) returns is greater than every
///   timestamp this clock returned or received before, across all threads, whatever the physical clock does (it may
///   stand still or jump backwards). The wall part follows the physical clock whenever that is ahead; otherwise the
///   logical counter advances.
/// - <see cref="Update"/> (the receive rule) moves the clock to at least the remote timestamp, so every later
///   <see cref="Now"/> is greater than it; a remote timestamp whose wall time is more than <see cref="MaxOffset"/> ahead of
///   our physical clock is rejected with <see cref="ClockOffsetException"/> and leaves the clock exactly as it was.
/// - Thread-safe: one short lock around a compare and an assignment. Reading the physical clock happens outside it.
/// - Never reads the system clock directly; time comes only from the <see cref="TimeProvider"/>.
/// </summary>
public sealed class HybridClock
{
    /// <summary>The default maximum clock offset between servers, in milliseconds (DESIGN §5).</summary>
    public const int DefaultMaxOffsetMilliseconds = 500;

    private readonly TimeProvider _time;
    private readonly Lock _lock = new();
    private HlcTimestamp _last;

    /// <summary>A clock with the default maximum offset (<see cref="DefaultMaxOffsetMilliseconds"/>).</summary>
    public HybridClock(TimeProvider time)
        : this(time, DefaultMaxOffset)
    {
    }

    /// <summary>A clock over <paramref name="time"/> that rejects remote timestamps more than <paramref name="maxOffset"/> ahead.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxOffset"/> is not positive.</exception>
    public HybridClock(TimeProvider time, TimeSpan maxOffset)
    {
        ArgumentNullException.ThrowIfNull(time);
        if (maxOffset <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(maxOffset), maxOffset, "the maximum clock offset must be positive");
        }

        _time = time;
        MaxOffset = maxOffset;
    }

    /// <summary>The default maximum clock offset: 500 ms.</summary>
    public static TimeSpan DefaultMaxOffset { get; } = TimeSpan.FromMilliseconds(DefaultMaxOffsetMilliseconds);

    /// <summary>How far ahead of our physical clock a remote clock may be before its timestamps are rejected.</summary>
    public TimeSpan MaxOffset { get; }

    /// <summary>
    /// The physical clock: nanoseconds since the Unix epoch from <see cref="TimeProvider.GetUtcNow"/> (100 ns resolution).
    /// </summary>
    /// <exception cref="InvalidOperationException">The time provider reads before 1970 or after 2262 (outside the HLC range).</exception>
    public long PhysicalNow => ToUnixNanos(_time.GetUtcNow());

    /// <summary>The last timestamp this clock returned or received (<see cref="HlcTimestamp.Zero"/> at first), without advancing it.</summary>
    public HlcTimestamp Last
    {
        get
        {
            lock (_lock)
            {
                return _last;
            }
        }
    }

    /// <summary>Converts a point in time to HLC wall nanoseconds (since the Unix epoch).</summary>
    /// <exception cref="InvalidOperationException">The time is before 1970 or after 2262 (outside the HLC range).</exception>
    public static long ToUnixNanos(DateTimeOffset time)
    {
        var nanos = (Int128)(time.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) * 100;
        if (nanos < 0 || nanos > long.MaxValue)
        {
            throw new InvalidOperationException(
                $"the physical clock reads {time.UtcDateTime:O}, outside the HLC range (1970-01-01 to 2262-04-11 UTC)");
        }

        return (long)nanos;
    }

    /// <summary>
    /// A new timestamp, greater than every timestamp this clock returned or received before: (physical, 0) if the
    /// physical clock is ahead of the last timestamp's wall time, else the last timestamp's successor.
    /// </summary>
    public HlcTimestamp Now()
    {
        var physical = PhysicalNow;
        lock (_lock)
        {
            _last = Tick(_last, physical);
            return _last;
        }
    }

    /// <summary>
    /// The receive rule: moves the clock to at least <paramref name="remote"/> and returns a timestamp for the receive
    /// event, greater than <paramref name="remote"/> and than every timestamp this clock returned or received before.
    /// Every later <see cref="Now"/> is greater still.
    /// </summary>
    /// <exception cref="ClockOffsetException">
    /// <paramref name="remote"/>'s wall time is more than <see cref="MaxOffset"/> ahead of <see cref="PhysicalNow"/>. The
    /// clock is left unchanged: a remote clock that far off must not drag ours along.
    /// </exception>
    public HlcTimestamp Update(HlcTimestamp remote)
    {
        var physical = PhysicalNow;
        if (remote.WallNanos - physical > MaxOffset.Ticks * 100) // No overflow: both are non-negative.
        {
            throw new ClockOffsetException(remote, physical, MaxOffset);
        }

        lock (_lock)
        {
            _last = Tick(HlcTimestamp.Max(_last, remote), physical);
            return _last;
        }
    }

    private static HlcTimestamp Tick(HlcTimestamp last, long physical) =>
        physical > last.WallNanos ? new HlcTimestamp(physical, 0) : last.Next();
}

namespace Canopy.Simulation;

/// <summary>
/// A server's physical clock in the simulation: virtual time plus a skew that wanders (piecewise linear between
/// random knots every <c>knotMicros</c>) inside ±<c>amplitudeMicros</c>. With the amplitude below half the max
/// offset, any two servers' clocks differ by less than the max offset at every instant; a knot interval much longer
/// than the amplitude keeps every clock monotonic while its rate drifts (up to ±2·amplitude/knot). The skew
/// belongs to the machine, so it survives process restarts. Knots come from the clock's own seeded random source,
/// drawn in order, so the clock is a pure function of the seed whatever order it is read in.
/// </summary>
internal sealed class SimClock(SimLoop loop, int seed, long amplitudeMicros, long knotMicros) : TimeProvider
{
    /// <summary>Virtual time 0 is this many nanoseconds after the Unix epoch (2025-06-15).</summary>
    public const long EpochNanos = 1_750_000_000L * 1_000_000_000L;

    private readonly Random _random = new(seed);
    private readonly List<long> _knots = [];

    public long SkewMicros(long t)
    {
        var i = (int)(t / knotMicros);
        while (_knots.Count <= i + 1)
        {
            _knots.Add((long)(((_random.NextDouble() * 2) - 1) * amplitudeMicros));
        }

        var a = _knots[i];
        var b = _knots[i + 1];
        return a + ((b - a) * (t - (i * knotMicros)) / knotMicros);
    }

    /// <summary>This clock's reading now, in microseconds of virtual time.</summary>
    public long NowMicros => loop.Now + SkewMicros(loop.Now);

    public override DateTimeOffset GetUtcNow() => DateTimeOffset.UnixEpoch.AddTicks(((EpochNanos / 1000) + NowMicros) * 10);
}

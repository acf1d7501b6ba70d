using Canopy.Simulation;

namespace Canopy.Replication.Tests.Simulation;

/// <summary>The event loop's bounds: a runaway seed must end, fast, as a violation.</summary>
public sealed class SimLoopTests
{
    /// <summary>
    /// A message storm is a runaway even when it takes few events: one event delivers a whole batch, and batches can
    /// grow without bound (truncate-on-stale-append seed 27 once grew one batch to 50 thousand appends; bounded by
    /// events alone, the seed ran for 48 minutes and took 18 GB).
    /// </summary>
    [Fact]
    public void TooManyMessagesIsARunaway()
    {
        var loop = new SimLoop(1);
        loop.CountSent((int)(SimLoop.MaxMessages / 2), 0);
        loop.CountSent((int)(SimLoop.MaxMessages / 2), 0);
        var e = Assert.ThrowsAny<Exception>(() => loop.CountSent(1, 0));
        Assert.StartsWith("runaway:", e.Message);
    }

    [Fact]
    public void TooManyEntriesIsARunaway()
    {
        var loop = new SimLoop(1);
        loop.CountSent(1, SimLoop.MaxEntries);
        var e = Assert.ThrowsAny<Exception>(() => loop.CountSent(1, 1));
        Assert.StartsWith("runaway:", e.Message);
    }

    [Fact]
    public void TooManyEventsIsARunaway()
    {
        var loop = new SimLoop(1);
        void Forever() => loop.After(1, Forever);
        loop.After(1, Forever);
        var e = Assert.ThrowsAny<Exception>(() => loop.RunUntil(long.MaxValue, static () => true));
        Assert.StartsWith("runaway:", e.Message);
        Assert.Equal(SimLoop.MaxSteps + 1, loop.Steps);
    }
}

using Canopy.Simulation;
using Canopy.Txn;
using Xunit.Abstractions;

namespace Canopy.Replication.Tests.Simulation;

/// <summary>
/// The transaction simulation as a test: our coordinator and replica code, deterministic, over a lossy network with
/// coordinator crashes; every seed's bank history must be serializable in commit order, with no intent left behind.
/// Each planted bug (txn-pitfalls.md) must be found. A failing seed prints its replay command; add it to
/// <see cref="RegressionSeeds"/>.
/// </summary>
public sealed class TxnSimulationTests(ITestOutputHelper output)
{
    /// <summary>Seeds that once exposed a bug; they run on every build.</summary>
    public static readonly TheoryData<ulong> RegressionSeeds = new()
    {
        99, // a latch handed to a waiter whose continuation hopped threads (SemaphoreSlim): the latch was never released
    };

    [Fact]
    public void ManySeedsWithFaultsHaveNoViolation()
    {
        var results = TxnSimulation.Run(new TxnSimOptions { Seeds = 120, FirstSeed = 1000 });
        var failed = results.Where(r => r.Violation is not null).ToList();
        foreach (var f in failed.Take(5))
        {
            output.WriteLine($"seed {f.Seed}: {f.Violation}\n  replay: canopy sim txn --seed {f.Seed}");
        }

        Assert.True(failed.Count == 0, $"{failed.Count} seeds violated a property: {string.Join(", ", failed.Select(f => f.Seed))} (replay: canopy sim txn --seed S)");
        Assert.True(results.Sum(r => r.Committed) > 2000, $"only {results.Sum(r => r.Committed)} transfers committed: the workload is not reaching the protocol");
        Assert.True(results.Sum(r => r.Crashed) > 50, "too few coordinator crashes: the recovery paths are not exercised");
    }

    [Theory]
    [MemberData(nameof(RegressionSeeds))]
    public void RegressionSeedStaysClean(ulong seed)
    {
        var r = TxnSimulation.RunSeed(seed, new TxnSimOptions());
        Assert.True(r.Violation is null, $"seed {seed}: {r.Violation}");
    }

    [Fact]
    public void ASeedReplaysIdentically()
    {
        var a = TxnSimulation.RunSeed(77, new TxnSimOptions());
        var b = TxnSimulation.RunSeed(77, new TxnSimOptions());
        Assert.Equal(a, b);
        Assert.True(a.Committed > 10);
    }

    /// <summary>Planted bugs the simulation must find within a budget of seeds (measured: each is found in the first few).</summary>
    public static readonly TheoryData<TxnBugs, int> DetectableBugs = new()
    {
        { TxnBugs.SkipRefresh, 20 },
        { TxnBugs.IgnorePushedWrites, 20 },
        { TxnBugs.NoTimestampCache, 20 },
        { TxnBugs.UnclearIsAborted, 40 },
    };

    [Theory]
    [MemberData(nameof(DetectableBugs))]
    public void APlantedBugIsFound(TxnBugs bug, int seeds)
    {
        var results = TxnSimulation.Run(new TxnSimOptions { Seeds = seeds, FirstSeed = 1, Bugs = bug });
        var first = results.FirstOrDefault(r => r.Violation is not null);
        Assert.True(first is not null, $"planted bug {bug} went unnoticed in {seeds} seeds");
        output.WriteLine($"{bug}: seed {first.Seed}: {first.Violation}");
    }
}

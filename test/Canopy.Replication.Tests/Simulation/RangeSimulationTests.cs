using Canopy.Simulation;
using Xunit.Abstractions;

namespace Canopy.Replication.Tests.Simulation;

/// <summary>
/// The seeded range simulation (leases, evaluation, client histories) as a test: many seeds with every fault on
/// must show no violation; planted bugs in the simulated lease manager and evaluation must be caught within a
/// bounded number of seeds; CanopyServer as it is (without the fixes of the bugs this simulation found) must be
/// caught too. A failing seed is printed with the command that replays it (`canopy sim ranges --seed S ...`).
/// </summary>
public sealed class RangeSimulationTests(ITestOutputHelper output)
{
    [Fact]
    public void SeedsWithFaultsHaveNoViolation()
    {
        var report = Run(new RangeSimOptions { Seeds = 400, FirstSeed = 1 });
        Assert.True(report.Violations == 0, $"{report.Violations} seeds violated a property: {string.Join(", ", report.FailedSeeds)} (replay: canopy sim ranges --seed S)");
        Assert.True(report.Operations > 100_000, $"only {report.Operations} operations completed: the workload is not reaching the ranges");
        Assert.True(report.Leases > 5 * 400, $"only {report.Leases} leases over 400 seeds: leases do not move");
        Assert.Equal(0, report.Inconclusive);
    }

    [Fact]
    public void SeedsWithoutFaultsHaveNoViolation()
    {
        var report = Run(new RangeSimOptions { Seeds = 20, FirstSeed = 1, Faults = false });
        Assert.Equal(0, report.Violations);
        Assert.Equal(0, report.Ambiguous);
    }

    [Fact]
    public void PausesBetweenLeaseCheckAndTimestampAreSafeWithTheFix()
    {
        var report = Run(new RangeSimOptions { Seeds = 150, FirstSeed = 5_000, EvaluationPauses = true });
        Assert.Equal(0, report.Violations);
    }

    [Fact]
    public void ASeedReplaysIdentically()
    {
        var options = new RangeSimOptions();
        var a = RangeSimulation.RunSeed(4242, options);
        var b = RangeSimulation.RunSeed(4242, options);
        Assert.Equal(a, b);
        Assert.True(a.Steps > 1_000 && a.Operations > 50, $"seed 4242 did too little: {a}");
    }

    /// <summary>Planted bugs (in the simulation's evaluation, never in src) and how many seeds the checks may take.</summary>
    /// <remarks>
    /// Not here: skip-sequence-check and ignore-apply-result. They plant bugs in a check that never fires in this
    /// design: a write is proposed only by the Raft leader holding the lease, so it always lands in the log before
    /// any later lease (no write was ever refused at apply for a changed lease in thousands of seeds; see
    /// <see cref="RangeSimReport.LeaseChangedWrites"/>). The check becomes load-bearing with proposal forwarding or
    /// lease transfers; add them here then.
    /// </remarks>
    public static readonly TheoryData<string, int> DetectableBugs = new()
    {
        { "serve-without-margin", 40 },
        // "early-takeover" planted its takeover through a lease transfer, which the range state machine now refuses.
        { "read-any-replica", 20 },
        { "write-ts-before-check", 20 },
    };

    [Theory]
    [MemberData(nameof(DetectableBugs))]
    public void PlantedBugIsCaught(string bug, int maxSeeds) =>
        AssertCaught(new RangeSimOptions { PlantBug = bug }, bug, maxSeeds);

    /// <summary>The bugs clients can observe, found by the linearizability check alone (no lease invariants).</summary>
    public static readonly TheoryData<string, int> BugsVisibleToClients = new()
    {
        { "read-any-replica", 20 },
        // "early-takeover": see above (transfers are refused at apply).
    };

    [Theory]
    [MemberData(nameof(BugsVisibleToClients))]
    public void PlantedBugIsCaughtByTheHistoryCheckAlone(string bug, int maxSeeds) =>
        AssertCaught(new RangeSimOptions { PlantBug = bug, HistoryCheckOnly = true }, bug + " (history check only)", maxSeeds);

    /// <summary>
    /// CanopyServer as it is serves right after a restart from a state machine that may miss acknowledged writes
    /// (stale reads): the history check must see it.
    /// </summary>
    [Fact]
    public void CanopyServerAsItIsIsCaught() =>
        AssertCaught(new RangeSimOptions { ServerFixes = false, HistoryCheckOnly = true }, "CanopyServer as it is (restart)", 300);

    /// <summary>CanopyServer as it is, with pauses between its lease check and its timestamp: served outside the lease.</summary>
    [Fact]
    public void CanopyServerAsItIsWithPausesIsCaught() =>
        AssertCaught(new RangeSimOptions { ServerFixes = false, EvaluationPauses = true }, "CanopyServer as it is (pauses)", 300);

    /// <summary>Seeds on which CanopyServer as it is fails (as of this commit); they pass once src/Canopy.Server is fixed.</summary>
    public static readonly TheoryData<ulong, bool> CanopyServerBugSeeds = new()
    {
        // Stale reads after a restart: the leaseholder serves before re-applying the committed writes it
        // acknowledged before the crash (their applies, and the commit index allowing them, are written unsynced).
        // Seed 103: s5 acknowledges write 30 of b0 (index 21 of r2) at 359.7 ms, crashes at 361 ms losing that
        // apply, restarts at 659 ms at index 20 and serves a read of b0 under its lease at 695 ms: 14, not 30.
        { 11, false },
        { 103, false },
        { 107, false },

        // A pause between EnsureLeaseAsync's check and `_clock.Now()`: a read timestamped after the next lease's
        // start (7, 58), a write applied with a timestamp past its lease's serve window (16).
        { 7, true },
        { 16, true },
        { 58, true },
    };

    [Theory(Skip = "CanopyServer bugs found by this simulation (restart stale reads; lease checked before the timestamp is taken): un-skip once src/Canopy.Server is fixed and ServerFixes no longer changes anything")]
    [MemberData(nameof(CanopyServerBugSeeds))]
    public void CanopyServerAsItIsIsSafe(ulong seed, bool pauses)
    {
        var options = new RangeSimOptions { ServerFixes = false, EvaluationPauses = pauses };
        var result = RangeSimulation.RunSeed(seed, options);
        Assert.True(result.Violation is null, $"seed {seed}: {result.Violation}\n  replay: {RangeSimulation.ReplayCommand(seed, options)}");
    }

    [Theory]
    [MemberData(nameof(CanopyServerBugSeeds))]
    public void CanopyServerBugSeedsPassWithTheFixes(ulong seed, bool pauses)
    {
        var options = new RangeSimOptions { EvaluationPauses = pauses };
        var result = RangeSimulation.RunSeed(seed, options);
        Assert.True(result.Violation is null, $"seed {seed}: {result.Violation}\n  replay: {RangeSimulation.ReplayCommand(seed, options)}");
    }

    // ---------------------------------------------------------------- the linearizability checker itself

    private static RegisterOp W(long v, long invoke, long ret) => new(true, v, invoke, ret, $"w{v}");

    private static RegisterOp R(long v, long invoke, long ret) => new(false, v, invoke, ret, $"r{v}");

    private const long Never = long.MaxValue;

    [Fact]
    public void SequentialRegisterHistoryIsLinearizable()
    {
        var h = new[] { R(0, 1, 2), W(1, 3, 4), R(1, 5, 6), W(2, 7, 8), R(2, 9, 10) };
        Assert.Equal(LinearizabilityOutcome.Linearizable, RegisterLinearizability.Check(h).Outcome);
    }

    [Fact]
    public void StaleReadAfterAnAcknowledgedWriteIsAViolation()
    {
        var h = new[] { W(1, 1, 2), W(2, 3, 4), R(1, 5, 6) };
        var result = RegisterLinearizability.Check(h);
        Assert.Equal(LinearizabilityOutcome.Violation, result.Outcome);
        Assert.Contains("r1", result.Detail);
    }

    [Fact]
    public void ConcurrentWritesMayBeSeenInEitherOrderButNotBoth()
    {
        // w1 and w2 overlap: a reader may see 1 then 2, or 2 then 1 ...
        Assert.Equal(LinearizabilityOutcome.Linearizable, RegisterLinearizability.Check([W(1, 1, 10), W(2, 2, 11), R(1, 3, 4), R(2, 12, 13)]).Outcome);
        Assert.Equal(LinearizabilityOutcome.Linearizable, RegisterLinearizability.Check([W(1, 1, 10), W(2, 2, 11), R(2, 3, 4), R(1, 12, 13)]).Outcome);

        // ... but two readers after both writes returned cannot disagree on the last one.
        Assert.Equal(LinearizabilityOutcome.Violation, RegisterLinearizability.Check([W(1, 1, 10), W(2, 2, 11), R(1, 12, 13), R(2, 14, 15), R(1, 16, 17)]).Outcome);
    }

    [Fact]
    public void AmbiguousWritesMayOrMayNotHaveHappened()
    {
        // Never read: as if it never happened.
        Assert.Equal(LinearizabilityOutcome.Linearizable, RegisterLinearizability.Check([W(1, 1, 2), W(2, 3, Never), R(1, 5, 6)]).Outcome);

        // Read: it happened, at some point after its invocation ...
        Assert.Equal(LinearizabilityOutcome.Linearizable, RegisterLinearizability.Check([W(1, 1, 2), W(2, 3, Never), R(1, 5, 6), R(2, 7, 8), R(2, 9, 10)]).Outcome);

        // ... only once, and not before it was invoked.
        Assert.Equal(LinearizabilityOutcome.Violation, RegisterLinearizability.Check([W(1, 1, 2), W(2, 3, Never), R(2, 5, 6), R(1, 7, 8)]).Outcome);
        Assert.Equal(LinearizabilityOutcome.Violation, RegisterLinearizability.Check([W(1, 1, 2), R(2, 3, 4), W(2, 5, Never)]).Outcome);
    }

    [Fact]
    public void ReadOfAValueNobodyWroteIsAViolation()
    {
        Assert.Equal(LinearizabilityOutcome.Violation, RegisterLinearizability.Check([W(1, 1, 2), R(7, 3, 4)]).Outcome);
    }

    [Fact]
    public void ManyConcurrentClientsAreCheckedQuickly()
    {
        // 8 clients, 2,000 operations on one register, every read returning the latest completed write or one in flight.
        var random = new Random(7);
        var ops = new List<RegisterOp>();
        long time = 0, last = 0, value = 0;
        for (var i = 0; i < 250; i++)
        {
            var start = ++time;
            var batch = new List<(bool Write, long V)>();
            for (var c = 0; c < 8; c++)
            {
                batch.Add(random.Next(2) == 0 ? (true, ++value) : (false, 0));
            }

            var lastWrite = batch.LastOrDefault(b => b.Write);
            foreach (var (write, v) in batch)
            {
                ops.Add(write ? W(v, start, time + 10) : R(random.Next(2) == 0 ? last : (lastWrite.Write ? lastWrite.V : last), start, time + 10));
            }

            time += 11;
            if (lastWrite.Write)
            {
                last = lastWrite.V;
            }
        }

        var result = RegisterLinearizability.Check(ops);
        Assert.Equal(LinearizabilityOutcome.Linearizable, result.Outcome);
        output.WriteLine($"{ops.Count} operations checked in {result.Steps} steps");
    }

    private void AssertCaught(RangeSimOptions options, string what, int maxSeeds)
    {
        // Seeds in batches (parallel inside), stopping at the first violation.
        const int batch = 20;
        for (var first = 1; first <= maxSeeds; first += batch)
        {
            var report = RangeSimulation.RunMany(options with { Seeds = Math.Min(batch, maxSeeds - first + 1), FirstSeed = (ulong)first }, TextWriter.Null);
            if (report.Violations > 0)
            {
                var seed = report.FailedSeeds[0];
                output.WriteLine($"{what}: caught at seed {seed}: {RangeSimulation.RunSeed(seed, options).Violation}");
                return;
            }
        }

        Assert.Fail($"{what} survived {maxSeeds} seeds: the range simulation no longer catches it");
    }

    private RangeSimReport Run(RangeSimOptions options)
    {
        var log = new StringWriter();
        var report = RangeSimulation.RunMany(options, log);
        output.WriteLine(log.ToString());
        return report;
    }
}

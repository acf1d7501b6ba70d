namespace Canopy.Simulation;

/// <summary>Options of a range-layer simulation run (`canopy sim ranges`).</summary>
public sealed record RangeSimOptions
{
    /// <summary>How many seeds to run, starting at <see cref="FirstSeed"/>.</summary>
    public int Seeds { get; init; } = 100;

    /// <summary>The first seed; seeds run are FirstSeed, FirstSeed+1, ...</summary>
    public ulong FirstSeed { get; init; } = 1;

    /// <summary>Simulated servers.</summary>
    public int Servers { get; init; } = 5;

    /// <summary>Ranges (Raft groups of 3 replicas each, placed on the servers).</summary>
    public int Ranges { get; init; } = 3;

    /// <summary>Keys per range the clients read and write.</summary>
    public int KeysPerRange { get; init; } = 3;

    /// <summary>Simulated duration of the faulty phase of each seed, before the network heals.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(12);

    /// <summary>Inject faults (loss, delay, duplication, partitions, crashes, process pauses, tick faults, leadership transfers).</summary>
    public bool Faults { get; init; } = true;

    /// <summary>Plant one bug from <see cref="RangeSimulation.PlantableBugs"/> in the simulated evaluation (mutation check).</summary>
    public string? PlantBug { get; init; }

    /// <summary>
    /// Pause the process, sometimes, between the lease check and the choice of the timestamp (as a GC pause or
    /// preemption can in CanopyServer.GetAsync/WriteAsync). Off by default: the evaluation is otherwise atomic.
    /// </summary>
    public bool EvaluationPauses { get; init; }

    /// <summary>
    /// Apply the fixes of the two CanopyServer bugs this simulation found. On by default; false simulates
    /// CanopyServer exactly as it is:
    /// - after a restart, serve a range only once its replica applied up to the last index of the log it recovered
    ///   (applies and commit-index-only changes are written unsynced, so a crash can lose the applies of
    ///   acknowledged writes, and the knowledge that they committed, while the log keeps them; CanopyServer serves
    ///   at once under the lease its state machine recovered: stale reads of acknowledged writes);
    /// - take the request's timestamp first and check the lease at that timestamp (CanopyServer checks the lease
    ///   at one HLC time and then takes a new timestamp, so a pause in between serves outside the lease; see
    ///   <see cref="EvaluationPauses"/>).
    /// </summary>
    public bool ServerFixes { get; init; } = true;

    /// <summary>
    /// Check only what clients observe (linearizability of every key's history, liveness), not the lease invariants
    /// at every apply and serve. To measure what the history checker finds on its own.
    /// </summary>
    public bool HistoryCheckOnly { get; init; }

    /// <summary>Seeds run at once (each seed is single-threaded and deterministic).</summary>
    public int Parallelism { get; init; } = Environment.ProcessorCount;

    /// <summary>Print every seed's one-line summary, not just failures.</summary>
    public bool Verbose { get; init; }

    /// <summary>If set, a trace of every client operation, serve and lease change (for replaying one seed).</summary>
    public TextWriter? Trace { get; init; }
}

/// <summary>The outcome of a run of many seeds.</summary>
public sealed record RangeSimReport(
    int Seeds,
    int Violations,
    IReadOnlyList<ulong> FailedSeeds,
    TimeSpan Elapsed,
    long Steps,
    long Operations,
    long Ambiguous,
    long Leases,
    long LeaseChangedWrites,
    int Inconclusive);

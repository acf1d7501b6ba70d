namespace Canopy.Simulation;

/// <summary>Options of a Raft simulation run (`canopy sim raft`).</summary>
public sealed record RaftSimOptions
{
    /// <summary>How many seeds to run, starting at <see cref="FirstSeed"/>.</summary>
    public int Seeds { get; init; } = 100;

    /// <summary>The first seed; seeds run are FirstSeed, FirstSeed+1, ...</summary>
    public ulong FirstSeed { get; init; } = 1;

    /// <summary>Simulated servers.</summary>
    public int Servers { get; init; } = 5;

    /// <summary>Raft groups (ranges) per simulation; each has 3 replicas placed on the servers.</summary>
    public int Groups { get; init; } = 4;

    /// <summary>Simulated duration of the faulty phase of each seed, before the network heals.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>Inject faults (loss, delay, duplication, reordering, partitions, crashes, clock jumps, membership changes).</summary>
    public bool Faults { get; init; } = true;

    /// <summary>Plant one bug from <see cref="RaftSimulation.PlantableBugs"/> (mutation check: the run must find violations).</summary>
    public string? PlantBug { get; init; }

    /// <summary>Seeds run at once (each seed is single-threaded and deterministic).</summary>
    public int Parallelism { get; init; } = Environment.ProcessorCount;

    /// <summary>Print every seed's one-line summary, not just failures.</summary>
    public bool Verbose { get; init; }
}

/// <summary>The outcome of a run of many seeds.</summary>
public sealed record RaftSimReport(int Seeds, int Violations, IReadOnlyList<ulong> FailedSeeds, TimeSpan Elapsed, long Steps, long Commits);

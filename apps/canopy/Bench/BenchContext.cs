namespace Canopy.Cli.Bench;

/// <summary>What every scenario gets: its settings, where to write, and the cancellation of the command.</summary>
internal sealed class BenchContext(TextWriter output, TextWriter error, bool json, TimeSpan duration, int trials, int failoverElectionTicks, CancellationToken cancel)
{
    private readonly long _started = System.Diagnostics.Stopwatch.GetTimestamp();

    public TimeSpan Duration { get; } = duration;

    public int Trials { get; } = trials;

    public int FailoverElectionTicks { get; } = failoverElectionTicks;

    public CancellationToken Cancel { get; } = cancel;

    public bool Json { get; } = json;

    /// <summary>A progress line (stderr with --json, so stdout holds only the JSON object).</summary>
    public void Progress(string message)
    {
        var w = Json ? error : output;
        var elapsed = Stats.Seconds(_started, System.Diagnostics.Stopwatch.GetTimestamp());
        lock (w)
        {
            w.WriteLine($"[{elapsed,6:F1}s] {message}");
        }
    }

    /// <summary>A result table (stdout, or stderr with --json).</summary>
    public void Table(TextTable table)
    {
        var w = Json ? error : output;
        lock (w)
        {
            table.Write(w);
            w.WriteLine();
        }
    }
}

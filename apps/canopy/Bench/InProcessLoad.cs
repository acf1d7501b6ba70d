using System.Diagnostics;
using System.Text.Json.Nodes;
using Canopy.Host;

namespace Canopy.Cli.Bench;

/// <summary>What one closed-loop load phase measured.</summary>
internal sealed record LoadResult(
    int Writers,
    double Seconds,
    long Commits,
    LatencySummary Latency,
    double CpuSeconds,
    long Syncs,
    double SyncMs,
    long NotLeader,
    long Retried,
    long Ambiguous)
{
    public double OpsPerSec => Seconds > 0 ? Commits / Seconds : 0;

    /// <summary>Process CPU (all three servers and the load generator) per commit, in µs.</summary>
    public double CpuUsPerCommit => Commits > 0 ? CpuSeconds * 1e6 / Commits : 0;

    /// <summary>Process CPU as a percentage of one core.</summary>
    public double CpuPercent => Seconds > 0 ? CpuSeconds / Seconds * 100 : 0;

    /// <summary>Synced log writes per second, summed over the three servers.</summary>
    public double SyncsPerSec => Seconds > 0 ? Syncs / Seconds : 0;

    /// <summary>Mean time of one synced log write (RocksDB write + fsync) during the window.</summary>
    public double MeanSyncMs => Syncs > 0 ? SyncMs / Syncs : 0;

    public JsonObject ToJson() => new()
    {
        ["writers"] = Writers,
        ["seconds"] = Stats.Round(Seconds, 2),
        ["commits"] = Commits,
        ["ops_per_s"] = Stats.Round(OpsPerSec, 0),
        ["latency"] = Latency.ToJson(),
        ["cpu_percent_of_one_core"] = Stats.Round(CpuPercent, 1),
        ["cpu_us_per_commit"] = Stats.Round(CpuUsPerCommit, 1),
        ["syncs_per_s_all_servers"] = Stats.Round(SyncsPerSec, 0),
        ["mean_sync_ms"] = Stats.Round(MeanSyncMs, 3),
        ["commits_per_sync"] = Stats.Round(Syncs > 0 ? (double)Commits / Syncs : 0, 2),
        ["not_leader_retries"] = NotLeader,
        ["other_retries"] = Retried,
        ["ambiguous"] = Ambiguous,
    };
}

/// <summary>
/// Closed-loop writers against an in-process <see cref="BenchCluster"/>: each writer has one proposal in flight at a
/// time (a 64-byte value under a 16-byte key drawn from 10,000), sent to the group's leader. Phases: warm-up, then the
/// measured window; a commit counts (and its latency is kept) when it completes inside the window.
/// </summary>
internal static class InProcessLoad
{
    public const int ValueBytes = 64;
    public const int KeyBytes = 16;

    public static async Task<LoadResult> RunAsync(
        BenchCluster cluster, IReadOnlyList<ulong> groups, int writersPerGroup, TimeSpan warmup, TimeSpan duration, CancellationToken ct)
    {
        var start = Stopwatch.GetTimestamp() + Ticks(warmup);
        var end = start + Ticks(duration);
        using var hardStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        hardStop.CancelAfter(warmup + duration + TimeSpan.FromSeconds(30));

        var writers = new List<Task<WriterStats>>();
        var id = 0;
        foreach (var g in groups)
        {
            for (var w = 0; w < writersPerGroup; w++)
            {
                var writer = id++;
                writers.Add(Task.Run(() => WriteAsync(cluster, g, writer, start, end, hardStop.Token), CancellationToken.None));
            }
        }

        await DelayUntil(start, ct);
        var cpu0 = Stats.ProcessCpu();
        var syncs0 = cluster.Syncs;
        var syncMs0 = cluster.SyncMs;
        var t0 = Stopwatch.GetTimestamp();
        await DelayUntil(end, ct);
        var cpu1 = Stats.ProcessCpu();
        var syncs1 = cluster.Syncs;
        var syncMs1 = cluster.SyncMs;
        var t1 = Stopwatch.GetTimestamp();

        var stats = await Task.WhenAll(writers);
        var seconds = Stats.Seconds(start, end);
        var cpu = (cpu1 - cpu0).TotalSeconds * (seconds / Stats.Seconds(t0, t1));
        return new LoadResult(
            writers.Count,
            seconds,
            stats.Sum(s => s.Commits),
            LatencySamples.Summarize(stats.Select(s => s.Latencies)),
            cpu,
            syncs1 - syncs0,
            syncMs1 - syncMs0,
            stats.Sum(s => s.NotLeader),
            stats.Sum(s => s.Retried),
            stats.Sum(s => s.Ambiguous));
    }

    public static long Ticks(TimeSpan t) => (long)(t.TotalSeconds * Stopwatch.Frequency);

    public static async Task DelayUntil(long timestamp, CancellationToken ct)
    {
        var ms = Stats.MsSince(Stopwatch.GetTimestamp(), timestamp);
        if (ms > 0)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(ms), ct);
        }
    }

    /// <summary>Writes the 16-byte key "k" + 15 digits of <paramref name="n"/>.</summary>
    public static void FormatKey(Span<byte> key, int n)
    {
        key[0] = (byte)'k';
        for (var i = key.Length - 1; i >= 1; i--)
        {
            key[i] = (byte)('0' + (n % 10));
            n /= 10;
        }
    }

    private static async Task<WriterStats> WriteAsync(BenchCluster cluster, ulong group, int writer, long start, long end, CancellationToken ct)
    {
        var stats = new WriterStats();
        var random = new Random((writer * 7919) + (int)group);
        var value = new byte[ValueBytes];
        random.NextBytes(value);
        var key = new byte[KeyBytes];
        try
        {
            await WriteLoopAsync(cluster, group, stats, random, value, key, end, start, ct);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            stats.Ambiguous++; // the hard stop: a proposal never completed
        }

        return stats;
    }

    private static async Task WriteLoopAsync(
        BenchCluster cluster, ulong group, WriterStats stats, Random random, byte[] value, byte[] key, long end, long start, CancellationToken ct)
    {
        var host = await cluster.FindLeaderAsync(group, ct);
        while (!ct.IsCancellationRequested)
        {
            var t0 = Stopwatch.GetTimestamp();
            if (t0 >= end)
            {
                break;
            }

            FormatKey(key, random.Next(10_000));
            var res = await host.ProposeAsync(group, KvStateMachine.EncodePut(key, value), ct);

            var t1 = Stopwatch.GetTimestamp();
            switch (res.Status)
            {
                case ProposeOutcomeStatus.Committed:
                    if (t1 >= start && t1 < end)
                    {
                        stats.Commits++;
                        stats.Latencies.Add(t1 - t0);
                    }

                    break;
                case ProposeOutcomeStatus.NotLeader:
                case ProposeOutcomeStatus.TransferInProgress:
                    stats.NotLeader++;
                    if (res.LeaderHint != 0 && res.LeaderHint != host.ServerId && res.LeaderHint <= BenchCluster.Servers)
                    {
                        host = cluster.Host(res.LeaderHint);
                    }
                    else
                    {
                        await Task.Delay(10, ct);
                        host = await cluster.FindLeaderAsync(group, ct);
                    }

                    break;
                case ProposeOutcomeStatus.Overloaded:
                    stats.Retried++;
                    await Task.Delay(1, ct);
                    break;
                case ProposeOutcomeStatus.Dropped:
                    stats.Retried++;
                    break;
                default:
                    stats.Ambiguous++;
                    break;
            }
        }
    }

    private sealed class WriterStats
    {
        public LatencySamples Latencies { get; } = new();

        public long Commits { get; set; }

        public long NotLeader { get; set; }

        public long Retried { get; set; }

        public long Ambiguous { get; set; }
    }
}

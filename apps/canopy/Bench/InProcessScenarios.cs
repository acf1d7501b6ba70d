using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Canopy.Cli.Bench;

/// <summary>The in-process scenarios: three RaftHost servers in this process (see <see cref="BenchCluster"/>).</summary>
internal static class InProcessScenarios
{
    private static readonly TimeSpan ElectionWait = TimeSpan.FromSeconds(30);

    /// <summary>One group: sequential puts (1 in flight), then 64 and 256 in flight.</summary>
    public static async Task<JsonObject> SingleAsync(BenchContext ctx)
    {
        ctx.Progress("single: starting 3 servers, 1 group");
        await using var cluster = await BenchCluster.StartAsync(1, ctx.Cancel);
        await RequireLeadersAsync(cluster, quiesced: false, ctx);

        var json = new JsonObject();
        var table = new TextTable(
            $"single group, 3 replicas, 64 B puts to the leader ({Duration(ctx)} measured per row)",
            "in flight", "ops/s", "p50 ms", "p99 ms", "max ms", "CPU µs/commit", "syncs/s (3 srv)", "sync ms", "retries");
        foreach (var inFlight in new[] { 1, 64, 256 })
        {
            ctx.Progress($"single: {inFlight} in flight");
            var warmup = inFlight == 1 ? TimeSpan.FromSeconds(2) : TimeSpan.FromSeconds(1);
            var r = await InProcessLoad.RunAsync(cluster, [1], inFlight, warmup, ctx.Duration, ctx.Cancel);
            json[$"inflight_{inFlight}"] = r.ToJson();
            table.Add(
                inFlight.ToString(Inv),
                Stats.F(r.OpsPerSec, 0),
                Stats.Ms(r.Latency.P50Ms),
                Stats.Ms(r.Latency.P99Ms),
                Stats.Ms(r.Latency.MaxMs),
                Stats.F(r.CpuUsPerCommit, 0),
                Stats.F(r.SyncsPerSec, 0),
                Stats.F(r.MeanSyncMs, 2),
                (r.NotLeader + r.Retried + r.Ambiguous).ToString(Inv));
        }

        ctx.Table(table);
        return json;
    }

    /// <summary>32 groups × 4 sequential writers each (128 in flight in total).</summary>
    public static async Task<JsonObject> MultiAsync(BenchContext ctx)
    {
        const int groups = 32;
        const int writersPerGroup = 4;
        ctx.Progress($"multi: starting 3 servers, {groups} groups");
        await using var cluster = await BenchCluster.StartAsync(groups, ctx.Cancel);
        await RequireLeadersAsync(cluster, quiesced: false, ctx);
        ctx.Progress($"multi: {groups} groups × {writersPerGroup} writers");
        var ids = Enumerable.Range(1, groups).Select(g => (ulong)g).ToArray();
        var r = await InProcessLoad.RunAsync(cluster, ids, writersPerGroup, TimeSpan.FromSeconds(2), ctx.Duration, ctx.Cancel);

        var table = new TextTable(
            $"{groups} groups × 3 replicas, {writersPerGroup} sequential writers per group ({Duration(ctx)} measured)",
            "writers", "ops/s", "p50 ms", "p99 ms", "max ms", "CPU % of 1 core", "CPU µs/commit", "syncs/s (3 srv)", "sync ms", "retries");
        table.Add(
            r.Writers.ToString(Inv),
            Stats.F(r.OpsPerSec, 0),
            Stats.Ms(r.Latency.P50Ms),
            Stats.Ms(r.Latency.P99Ms),
            Stats.Ms(r.Latency.MaxMs),
            Stats.F(r.CpuPercent, 0),
            Stats.F(r.CpuUsPerCommit, 0),
            Stats.F(r.SyncsPerSec, 0),
            Stats.F(r.MeanSyncMs, 2),
            (r.NotLeader + r.Retried + r.Ambiguous).ToString(Inv));
        ctx.Table(table);
        var json = r.ToJson();
        json["groups"] = groups;
        return json;
    }

    /// <summary>Idle cost: 3 servers with no group, then 100, then 1,000 quiesced groups (3 replicas each).</summary>
    public static async Task<JsonObject> IdleAsync(BenchContext ctx)
    {
        ctx.Progress("idle: starting 3 servers, no groups (baseline)");
        await using var cluster = await BenchCluster.StartAsync(0, ctx.Cancel);
        await Task.Delay(TimeSpan.FromSeconds(1), ctx.Cancel); // connections up
        var json = new JsonObject();
        var table = new TextTable(
            "idle: 3 servers in this process, every group quiesced after its election",
            "groups", "CPU % of 1 core", "µs CPU/s per group", "marginal µs/s per group", "frames/s (3 srv)", "syncs/s", "settle s", "awake at end");
        var baseline = await MeasureIdleAsync(cluster, ctx.Duration, ctx.Cancel);
        json["groups_0"] = baseline.ToJson(baseline);
        table.Add("0", Stats.F(baseline.CpuPercent, 2), "-", "-", Stats.F(baseline.FramesPerSec, 0), Stats.F(baseline.SyncsPerSec, 1), "-", "-");

        foreach (var groups in new[] { 100, 1000 })
        {
            ctx.Progress($"idle: {groups} groups: bootstrapping and electing");
            var sw = Stopwatch.StartNew();
            await cluster.AddGroupsAsync(groups, ctx.Cancel);
            var missing = await cluster.WaitForLeadersAsync(TimeSpan.FromSeconds(90), quiesced: true, ctx.Cancel);
            var settle = sw.Elapsed.TotalSeconds;
            if (missing > 0)
            {
                ctx.Progress($"idle: {missing} of {groups} groups not quiesced after {settle:F0} s; measuring anyway");
            }

            ctx.Progress($"idle: {groups} groups quiesced after {settle:F1} s; measuring for {Duration(ctx)}");
            var m = await MeasureIdleAsync(cluster, ctx.Duration, ctx.Cancel);
            var awake = await cluster.CountNotSettledAsync(quiesced: true);
            var j = m.ToJson(baseline);
            j["groups"] = groups;
            j["cpu_us_per_s_per_group"] = Stats.Round(m.UsPerSecPerGroup(groups), 2);
            j["marginal_cpu_us_per_s_per_group"] = Stats.Round(m.MarginalUsPerSecPerGroup(groups, baseline), 2);
            j["settle_s"] = Stats.Round(settle, 2);
            j["not_quiesced_before"] = missing;
            j["not_quiesced_after"] = awake;
            json[$"groups_{groups}"] = j;
            table.Add(
                groups.ToString(Inv),
                Stats.F(m.CpuPercent, 2),
                Stats.F(m.UsPerSecPerGroup(groups), 1),
                Stats.F(m.MarginalUsPerSecPerGroup(groups, baseline), 1),
                Stats.F(m.FramesPerSec, 0),
                Stats.F(m.SyncsPerSec, 1),
                Stats.F(settle, 1),
                awake.ToString(Inv));
        }

        ctx.Table(table);
        return json;
    }

    private static async Task<IdleSample> MeasureIdleAsync(BenchCluster cluster, TimeSpan duration, CancellationToken ct)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
        var cpu0 = Stats.ProcessCpu();
        var frames0 = cluster.FramesSent;
        var syncs0 = cluster.Syncs;
        var t0 = Stopwatch.GetTimestamp();
        await Task.Delay(duration, ct);
        var cpu1 = Stats.ProcessCpu();
        var t1 = Stopwatch.GetTimestamp();
        var seconds = Stats.Seconds(t0, t1);
        return new IdleSample(seconds, (cpu1 - cpu0).TotalSeconds, (cluster.FramesSent - frames0) / seconds, (cluster.Syncs - syncs0) / seconds);
    }

    private static async Task RequireLeadersAsync(BenchCluster cluster, bool quiesced, BenchContext ctx)
    {
        var missing = await cluster.WaitForLeadersAsync(ElectionWait, quiesced, ctx.Cancel);
        if (missing > 0)
        {
            throw new InvalidOperationException($"{missing} of {cluster.Groups} groups elected no leader within {ElectionWait.TotalSeconds:F0} s");
        }
    }

    private static string Duration(BenchContext ctx) => Commands.Duration.Format(ctx.Duration);

    private static IFormatProvider Inv => System.Globalization.CultureInfo.InvariantCulture;

    private readonly record struct IdleSample(double Seconds, double CpuSeconds, double FramesPerSec, double SyncsPerSec)
    {
        public double CpuPercent => CpuSeconds / Seconds * 100;

        public double UsPerSecPerGroup(int groups) => CpuSeconds / Seconds * 1e6 / groups;

        public double MarginalUsPerSecPerGroup(int groups, IdleSample baseline) => Math.Max(0, CpuPercent - baseline.CpuPercent) / 100 * 1e6 / groups;

        public JsonObject ToJson(IdleSample baseline) => new()
        {
            ["seconds"] = Stats.Round(Seconds, 2),
            ["cpu_percent_of_one_core"] = Stats.Round(CpuPercent, 3),
            ["cpu_percent_above_no_groups"] = Stats.Round(CpuPercent - baseline.CpuPercent, 3),
            ["frames_per_s_all_servers"] = Stats.Round(FramesPerSec, 1),
            ["syncs_per_s_all_servers"] = Stats.Round(SyncsPerSec, 2),
        };
    }
}

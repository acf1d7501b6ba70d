using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Canopy.Client;
using Canopy.Rpc;

namespace Canopy.Cli.Bench;

/// <summary>
/// Commit latency of transactions as a client sees it (begin → writes → commit), one-phase vs parallel commits vs
/// two-phase, on its own cluster of real `canopy start` processes (the harness of `bench kv`: <see cref="KvCluster"/>,
/// <see cref="KvServerProcess"/>) started with <c>--inject-delay-ms D</c>, so every message between servers (Raft
/// frames and the gateway's requests to other leaseholders) takes D one way; the client talks to one server (the
/// gateway, fixed for the whole run) over loopback without delay.
/// Shapes (distinct keys per transaction, 64-byte values, nothing read, so no conflicts and no refreshes):
/// - onephase: 2 keys in ONE range, whose leaseholder is not the gateway (one-phase commit: one request to the
///   leaseholder, one round of consensus);
/// - parallel: 1 key in each of 3 ranges whose leaseholders are on as many different servers as the cluster allows
///   (3 with 3 servers, one of them the gateway's), written first in the one-phase range (the anchor: the
///   transaction record lives there, on a server other than the gateway);
/// - twophase: the same 3-range shape with parallel commits off (intents, then the commit record: two rounds).
/// Sequential (one transaction at a time), a warm-up first, then interleaved rounds (each round runs the three once,
/// in an order that rotates every round) so that noise on the shared machine hits all three alike.
/// </summary>
internal static class CommitScenario
{
    public const int ValueBytes = 64;
    public static readonly string[] Kinds = ["onephase", "parallel", "twophase"];

    /// <summary>What to run.</summary>
    public sealed record Settings(int Servers, int DelayMs, int Rounds, TimeSpan MaxMeasured, int WarmupRounds, int GapMs);

    /// <summary>The chosen gateway and ranges.</summary>
    private sealed record Plan(KvServerProcess Gateway, RangeInfo OneRange, RangeInfo[] MultiRanges)
    {
        public int DistinctHolders => MultiRanges.Select(r => r.Leaseholder).Distinct().Count();
    }

    public static async Task<JsonObject> RunAsync(BenchContext ctx, Settings settings)
    {
        var ct = ctx.Cancel;
        var servers = settings.Servers;
        var root = Path.Combine(Path.GetTempPath(), $"canopy-bench-commit-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(root);
        var ports = BenchCluster.FreePorts(2 * servers);
        var join = string.Join(',', Enumerable.Range(0, servers).Select(i => $"127.0.0.1:{ports[2 * i]}"));
        var nodes = Enumerable.Range(0, servers).Select(i => new KvServerProcess(
            (ulong)(i + 1),
            $"127.0.0.1:{ports[2 * i]}",
            ports[(2 * i) + 1],
            [
                "start", "--store", Path.Combine(root, $"s{i + 1}"), "--listen-addr", $"127.0.0.1:{ports[2 * i]}",
                "--http-addr", $"127.0.0.1:{ports[(2 * i) + 1]}", "--join", join,
                "--inject-delay-ms", settings.DelayMs.ToString(CultureInfo.InvariantCulture),
            ])).ToArray();
        using var http = new HttpClient(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(1), UseProxy = false }) { Timeout = TimeSpan.FromSeconds(3) };
        var cluster = new KvCluster(nodes, http);
        try
        {
            ctx.Progress($"commit: starting {servers} `canopy start --inject-delay-ms {settings.DelayMs}` processes (stores under {root})");
            var sw = Stopwatch.StartNew();
            foreach (var n in nodes)
            {
                n.Start();
            }

            foreach (var n in nodes)
            {
                await cluster.WaitUpAsync(n, ct);
            }

            var upMs = sw.Elapsed.TotalMilliseconds;
            await using (var admin = await CanopyClient.ConnectAsync(nodes.Select(n => n.ListenAddress).ToList(), ct: ct))
            {
                await admin.InitAsync(ct);
            }

            await WaitLeaseholdersAsync(cluster, nodes, ct);
            var ranges = await UserRangesAsync(cluster, nodes, ct);
            ctx.Progress($"commit: up in {upMs:F0} ms, initialised with {ranges.Count} user ranges in {sw.Elapsed.TotalMilliseconds - upMs:F0} ms more; " +
                $"leaseholders: {string.Join(", ", ranges.Select(r => $"r{r.RangeId}→s{r.Leaseholder}"))}");

            var plan = Choose(ranges, nodes);
            ctx.Progress($"commit: gateway s{plan.Gateway.Id} ({plan.Gateway.ListenAddress}); onephase in {Describe(plan.OneRange)}; " +
                $"parallel/twophase in {string.Join(", ", plan.MultiRanges.Select(Describe))} (leaseholders on {plan.DistinctHolders} servers, anchor first)");
            if (plan.DistinctHolders < Math.Min(3, servers))
            {
                ctx.Progress($"commit: note: the leases of the user ranges are on only {plan.DistinctHolders} server(s); the multi-range transactions span that many");
            }

            // The transaction client knows only the gateway: every transaction is coordinated there (never learns others:
            // it makes no routed calls, so no leaseholder address is ever added to its pool).
            await using var client = await CanopyClient.ConnectAsync([plan.Gateway.ListenAddress], ct: ct);
            var runner = new Runner(client, plan, settings.GapMs);

            ctx.Progress($"commit: warm-up, {settings.WarmupRounds} rounds");
            for (var i = 0; i < settings.WarmupRounds; i++)
            {
                await runner.RoundAsync(i, measure: false, ct);
            }

            ctx.Progress($"commit: measuring up to {settings.Rounds} rounds (at most {Commands.Duration.Format(settings.MaxMeasured)}), one transaction at a time, order rotating each round");
            var measureStart = Stopwatch.GetTimestamp();
            var nextReport = measureStart + (5 * Stopwatch.Frequency);
            var rounds = 0;
            while (rounds < settings.Rounds && Stats.Seconds(measureStart, Stopwatch.GetTimestamp()) < settings.MaxMeasured.TotalSeconds)
            {
                await runner.RoundAsync(rounds, measure: true, ct);
                rounds++;
                if (Stopwatch.GetTimestamp() >= nextReport)
                {
                    nextReport += 5 * Stopwatch.Frequency;
                    ctx.Progress($"commit: {rounds} rounds; p50 so far: {string.Join(", ", Kinds.Select(k => $"{k} {runner.Summary(k).P50Ms:F2} ms"))}");
                }
            }

            var measuredS = Stats.Seconds(measureStart, Stopwatch.GetTimestamp());
            var after = await UserRangesAsync(cluster, nodes, ct);
            var moved = plan.MultiRanges.Append(plan.OneRange).Where(r => after.FirstOrDefault(a => a.RangeId == r.RangeId)?.Leaseholder != r.Leaseholder).Select(r => r.RangeId).Distinct().ToList();
            if (moved.Count > 0)
            {
                ctx.Progress($"commit: warning: the lease of {string.Join(", ", moved.Select(m => $"r{m}"))} moved during the run; the numbers mix placements");
            }

            var one = runner.Summary("onephase");
            var par = runner.Summary("parallel");
            var two = runner.Summary("twophase");
            var table = new TextTable(
                $"commit latency, client view (begin → writes → commit), {servers} servers, injected one-way delay {settings.DelayMs} ms between servers, gateway s{plan.Gateway.Id}, {rounds} interleaved rounds",
                "transaction", "p50 ms", "p99 ms", "mean ms", "max ms", "count", "errors", "commit call p50 ms");
            foreach (var k in Kinds)
            {
                var s = runner.Summary(k);
                table.Add(Label(k, plan), Stats.Ms(s.P50Ms), Stats.Ms(s.P99Ms), Stats.Ms(s.MeanMs), Stats.Ms(s.MaxMs), s.Count.ToString(CultureInfo.InvariantCulture), runner.Errors(k).ToString(CultureInfo.InvariantCulture), Stats.Ms(runner.CommitSummary(k).P50Ms));
            }

            var oneC = runner.CommitSummary("onephase");
            var parC = runner.CommitSummary("parallel");
            var twoC = runner.CommitSummary("twophase");
            table.Add("ratio parallel / onephase", Ratio(par.P50Ms, one.P50Ms), Ratio(par.P99Ms, one.P99Ms), Ratio(par.MeanMs, one.MeanMs), "", "", "", Ratio(parC.P50Ms, oneC.P50Ms));
            table.Add("ratio parallel / twophase", Ratio(par.P50Ms, two.P50Ms), Ratio(par.P99Ms, two.P99Ms), Ratio(par.MeanMs, two.MeanMs), "", "", "", Ratio(parC.P50Ms, twoC.P50Ms));
            ctx.Table(table);
            foreach (var (k, why) in runner.FirstErrors)
            {
                ctx.Progress($"commit: first error of {k}: {why}");
            }

            var result = new JsonObject
            {
                ["delay_ms"] = settings.DelayMs,
                ["servers"] = servers,
                ["gateway"] = plan.Gateway.Id,
                ["rounds"] = rounds,
                ["warmup_rounds"] = settings.WarmupRounds,
                ["gap_ms"] = settings.GapMs,
                ["measured_s"] = Stats.Round(measuredS, 1),
                ["start_ms"] = Stats.Round(upMs, 0),
                ["value_bytes"] = ValueBytes,
                ["multi_range_leaseholder_servers"] = plan.DistinctHolders,
                ["leases_moved_during_run"] = new JsonArray([.. moved.Select(m => (JsonNode)m)]),
            };
            foreach (var k in Kinds)
            {
                var s = runner.Summary(k);
                var c = runner.CommitSummary(k);
                result[k] = new JsonObject
                {
                    ["p50_ms"] = Stats.Round(s.P50Ms, 3),
                    ["p99_ms"] = Stats.Round(s.P99Ms, 3),
                    ["mean_ms"] = Stats.Round(s.MeanMs, 3),
                    ["max_ms"] = Stats.Round(s.MaxMs, 3),
                    ["count"] = s.Count,
                    ["errors"] = runner.Errors(k),
                    ["ranges"] = new JsonArray([.. (k == "onephase" ? [plan.OneRange] : plan.MultiRanges).Select(r => (JsonNode)new JsonObject
                    {
                        ["range"] = r.RangeId,
                        ["start"] = CanopyKeys.Format(r.StartKey),
                        ["leaseholder"] = r.Leaseholder,
                    })]),
                    ["keys_per_txn"] = k == "onephase" ? 2 : plan.MultiRanges.Length,
                    ["commit_call"] = new JsonObject
                    {
                        ["p50_ms"] = Stats.Round(c.P50Ms, 3),
                        ["p99_ms"] = Stats.Round(c.P99Ms, 3),
                        ["mean_ms"] = Stats.Round(c.MeanMs, 3),
                    },
                };
            }

            result["ratios"] = new JsonObject
            {
                ["parallel_over_onephase_p50"] = RatioValue(par.P50Ms, one.P50Ms),
                ["parallel_over_twophase_p50"] = RatioValue(par.P50Ms, two.P50Ms),
                ["parallel_over_onephase_mean"] = RatioValue(par.MeanMs, one.MeanMs),
                ["parallel_over_twophase_mean"] = RatioValue(par.MeanMs, two.MeanMs),
                ["parallel_over_onephase_p99"] = RatioValue(par.P99Ms, one.P99Ms),
                ["parallel_over_twophase_p99"] = RatioValue(par.P99Ms, two.P99Ms),
                ["commit_call_parallel_over_onephase_p50"] = RatioValue(parC.P50Ms, oneC.P50Ms),
                ["commit_call_parallel_over_twophase_p50"] = RatioValue(parC.P50Ms, twoC.P50Ms),
            };
            return result;
        }
        catch (Exception ex) when (ex is not OperationCanceledException && nodes.Any(n => !n.IsRunning && n.Started))
        {
            var dead = nodes.First(n => !n.IsRunning && n.Started);
            throw new InvalidOperationException($"commit: {ex.Message} (server {dead.Id} exited; its last output: {dead.Tail().ReplaceLineEndings(" | ")})", ex);
        }
        finally
        {
            foreach (var n in nodes)
            {
                n.Dispose();
            }

            BenchCluster.TryDelete(root);
        }
    }

    /// <summary>
    /// Picks the gateway and the ranges: the 3 (or fewer) ranges of the multi-range transactions on as many different
    /// leaseholders as possible, the first of them (the anchor, also the one-phase range) led by a server other than
    /// the gateway; ties go to the lowest server id and range id.
    /// </summary>
    private static Plan Choose(IReadOnlyList<RangeInfo> ranges, KvServerProcess[] nodes)
    {
        if (ranges.Count < 2)
        {
            throw new InvalidOperationException($"commit: needs at least 2 user ranges, the cluster has {ranges.Count}");
        }

        var want = Math.Min(3, ranges.Count);
        Plan? best = null;
        (int Distinct, int AnchorRemote, int OthersRemote) bestScore = (-1, -1, -1);
        foreach (var gateway in nodes.OrderBy(n => n.Id))
        {
            foreach (var anchor in ranges)
            {
                // The rest: greedily a range of each leaseholder not yet covered (other servers than the gateway
                // first), then any.
                var chosen = new List<RangeInfo> { anchor };
                foreach (var r in ranges.Where(r => r != anchor).OrderBy(r => r.Leaseholder == gateway.Id ? 1 : 0).ThenBy(r => r.RangeId))
                {
                    if (chosen.Count < want && !chosen.Any(c => c.Leaseholder == r.Leaseholder))
                    {
                        chosen.Add(r);
                    }
                }

                foreach (var r in ranges.Where(r => !chosen.Contains(r)).OrderBy(r => r.RangeId))
                {
                    if (chosen.Count == want)
                    {
                        break;
                    }

                    chosen.Add(r);
                }

                var score = (chosen.Select(c => c.Leaseholder).Distinct().Count(), anchor.Leaseholder != gateway.Id ? 1 : 0, chosen.Count(c => c.Leaseholder != gateway.Id));
                if (score.CompareTo(bestScore) > 0)
                {
                    bestScore = score;
                    best = new Plan(gateway, anchor, [.. chosen]);
                }
            }
        }

        return best!;
    }

    /// <summary>
    /// Waits until every server names the same leaseholder for every range (as <see cref="KvCluster.WaitLeaseholdersAsync"/>),
    /// but on timeout says which ranges disagree and how each server sees them.
    /// </summary>
    private static async Task WaitLeaseholdersAsync(KvCluster cluster, KvServerProcess[] nodes, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var views = await Task.WhenAll(nodes.Select(n => cluster.RangesOnAsync(n, TimeSpan.FromSeconds(3), ct)));
            var ids = views.Where(v => v is not null).SelectMany(v => v!).Select(r => r.RangeId).Distinct().Order().ToList();
            var bad = views.Any(v => v is not { Count: > 0 })
                ? ids
                : ids.Where(id => views.Select(v => v!.FirstOrDefault(r => r.RangeId == id)?.Leaseholder ?? 0).Distinct().Count() != 1
                    || views[0]!.First(r => r.RangeId == id).Leaseholder == 0).ToList();
            if (ids.Count > 0 && bad.Count == 0)
            {
                return;
            }

            if (sw.Elapsed > TimeSpan.FromSeconds(60))
            {
                var detail = string.Join("; ", nodes.Select((n, i) => $"s{n.Id} sees " + (views[i] is { } v
                    ? string.Join(",", v.Where(r => bad.Contains(r.RangeId)).Select(r => $"r{r.RangeId}→{r.Leaseholder}(leader {r.RaftLeader}, applied {r.AppliedIndex})"))
                    : "nothing (no answer)")));
                var tails = string.Join(" || ", nodes.Select(n => $"s{n.Id}: " + string.Join(" | ", n.Tail().Split('\n').TakeLast(4))));
                throw new InvalidOperationException($"commit: ranges {string.Join(",", bad.Select(b => $"r{b}"))} have no leaseholder agreed by every server after 60 s: {detail}; last server output: {tails}");
            }

            await Task.Delay(50, ct);
        }
    }

    private static async Task<List<RangeInfo>> UserRangesAsync(KvCluster cluster, KvServerProcess[] nodes, CancellationToken ct) =>
        (await cluster.RangesAsync(nodes, ct)).Where(r => r.StartKey.Length > 0).OrderBy(r => r.RangeId).ToList();

    private static string Describe(RangeInfo r) => $"r{r.RangeId} [{CanopyKeys.Format(r.StartKey)}, {(r.EndKey is null ? "∞" : CanopyKeys.Format(r.EndKey))}) @s{r.Leaseholder}";

    private static string Label(string kind, Plan plan) => kind switch
    {
        "onephase" => $"onephase (2 keys, r{plan.OneRange.RangeId}@s{plan.OneRange.Leaseholder})",
        "parallel" => $"parallel ({plan.MultiRanges.Length} ranges: {string.Join(",", plan.MultiRanges.Select(r => $"r{r.RangeId}@s{r.Leaseholder}"))})",
        _ => $"twophase ({plan.MultiRanges.Length} ranges, parallel commits off)",
    };

    private static string Ratio(double a, double b) => b > 0 ? Stats.F(a / b, 2) + "×" : "-";

    private static double RatioValue(double a, double b) => b > 0 ? Stats.Round(a / b, 3) : 0;

    /// <summary>Runs the transactions and keeps their latencies.</summary>
    private sealed class Runner(CanopyClient client, Plan plan, int gapMs)
    {
        private static readonly TransactionOptions OnePhaseOptions = new() { OnePhase = true, ParallelCommits = true };
        private static readonly TransactionOptions ParallelOptions = new() { OnePhase = true, ParallelCommits = true };
        private static readonly TransactionOptions TwoPhaseOptions = new() { OnePhase = true, ParallelCommits = false };

        private readonly Dictionary<string, LatencySamples> _samples = Kinds.ToDictionary(k => k, _ => new LatencySamples());
        private readonly Dictionary<string, LatencySamples> _commitSamples = Kinds.ToDictionary(k => k, _ => new LatencySamples());
        private readonly Dictionary<string, long> _errors = Kinds.ToDictionary(k => k, _ => 0L);
        private readonly Dictionary<string, string> _firstErrors = [];
        private readonly string _tag = Guid.NewGuid().ToString("N")[..6];
        private readonly byte[] _value = RandomValue();
        private long _seq;

        public IEnumerable<(string Kind, string Why)> FirstErrors => _firstErrors.Select(kv => (kv.Key, kv.Value));

        public LatencySummary Summary(string kind) => LatencySamples.Summarize([_samples[kind]]);

        /// <summary>The commit call alone (the client's txn_commit round trip to the gateway, which runs the protocol).</summary>
        public LatencySummary CommitSummary(string kind) => LatencySamples.Summarize([_commitSamples[kind]]);

        public long Errors(string kind) => _errors[kind];

        /// <summary>One transaction of each kind, in an order rotated by <paramref name="round"/>.</summary>
        public async Task RoundAsync(int round, bool measure, CancellationToken ct)
        {
            for (var i = 0; i < Kinds.Length; i++)
            {
                var kind = Kinds[(round + i) % Kinds.Length];
                await RunAsync(kind, measure, ct);
                if (gapMs > 0)
                {
                    await Task.Delay(gapMs, ct);
                }
            }
        }

        private async Task RunAsync(string kind, bool measure, CancellationToken ct)
        {
            var seq = Interlocked.Increment(ref _seq);
            byte[][] keys;
            TransactionOptions options;
            switch (kind)
            {
                case "onephase":
                    keys = [Key(plan.OneRange, kind, seq, 0), Key(plan.OneRange, kind, seq, 1)];
                    options = OnePhaseOptions;
                    break;
                case "parallel":
                    keys = [.. plan.MultiRanges.Select((r, j) => Key(r, kind, seq, j))];
                    options = ParallelOptions;
                    break;
                default:
                    keys = [.. plan.MultiRanges.Select((r, j) => Key(r, kind, seq, j))];
                    options = TwoPhaseOptions;
                    break;
            }

            var t0 = Stopwatch.GetTimestamp();
            var tc = t0;
            string? error;
            try
            {
                var txn = await client.BeginTransactionAsync(options, ct);
                foreach (var k in keys)
                {
                    await txn.PutAsync(k, _value, ct);
                }

                tc = Stopwatch.GetTimestamp();
                var result = await txn.CommitAsync(ct);
                error = result.IsCommitted ? null : $"{result.Outcome}: {result.Reason}";
            }
            catch (CanopyException e)
            {
                error = e.Message;
            }

            var t1 = Stopwatch.GetTimestamp();
            if (error is not null)
            {
                _errors[kind]++;
                _firstErrors.TryAdd(kind, error);
                return;
            }

            if (measure)
            {
                _samples[kind].Add(t1 - t0);
                _commitSamples[kind].Add(t1 - tc);
            }
        }

        /// <summary>A fresh key inside <paramref name="range"/>: its start key ("a" for the first user range), then a unique suffix.</summary>
        private byte[] Key(RangeInfo range, string kind, long seq, int part)
        {
            var prefix = range.StartKey is [0x01] ? "a"u8.ToArray() : range.StartKey;
            var suffix = Encoding.ASCII.GetBytes($"/bench-commit/{_tag}/{kind}/{seq.ToString("D8", CultureInfo.InvariantCulture)}/{part}");
            return [.. prefix, .. suffix];
        }

        private static byte[] RandomValue()
        {
            var v = new byte[ValueBytes];
            Random.Shared.NextBytes(v);
            return v;
        }
    }
}

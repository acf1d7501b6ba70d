using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using Canopy.Client;
using Canopy.Rpc;

namespace Canopy.Cli.Bench;

/// <summary>
/// The leader grid end to end: N real `canopy start` processes (the canopy.dll of this CLI, temporary stores, free
/// loopback ports), initialised through <see cref="CanopyClient.InitAsync"/>, loaded through one
/// <see cref="CanopyClient"/> connected to every server (the router sends each key to its range's leaseholder).
/// Phases, each a warm-up second then the measured window (an operation counts, and its latency is kept, when it
/// starts after the warm-up and ends inside the window); closed-loop clients, 64-byte values under 16-byte keys drawn
/// uniformly from 10,000 per range:
/// - writes to ONE range (its keys only) at every concurrency, 1 being the sequential latency;
/// - writes spread over every user range (client i's k-th put goes to range (i + k) mod ranges);
/// - reads (get) of the written keys: sequential on one range, and spread at the highest concurrency;
/// - failover: 4 writers on the one range, SIGKILL its leaseholder's process, then measure SIGKILL → a survivor
///   reports itself leaseholder (list_ranges to each survivor every 20 ms) and SIGKILL → the first acknowledged put to
///   the range (puts started every 20 ms once the process is gone, besides the writers'); restart the killed
///   server, wait until it has applied what the others had and every range has a leaseholder again.
/// Server CPU per operation is the growth of the server processes' CPU time over the window, divided by the
/// operations (client CPU excluded: the client is this process; the servers' idle cost included, which is measured
/// separately for 3 s after the load phases).
/// </summary>
internal static class KvScenario
{
    public const int ValueBytes = 64;
    public const int KeyBytes = 16;
    private const int KeysPerRange = 10_000;
    private static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);

    public static async Task<JsonObject> RunAsync(BenchContext ctx, int servers, IReadOnlyList<int> concurrency)
    {
        var ct = ctx.Cancel;
        var root = Path.Combine(Path.GetTempPath(), $"canopy-bench-kv-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(root);
        var ports = BenchCluster.FreePorts(2 * servers);
        var join = string.Join(',', Enumerable.Range(0, servers).Select(i => $"127.0.0.1:{ports[2 * i]}"));
        var nodes = Enumerable.Range(0, servers).Select(i => new KvServerProcess(
            (ulong)(i + 1),
            $"127.0.0.1:{ports[2 * i]}",
            ports[(2 * i) + 1],
            ["start", "--store", Path.Combine(root, $"s{i + 1}"), "--listen-addr", $"127.0.0.1:{ports[2 * i]}", "--http-addr", $"127.0.0.1:{ports[(2 * i) + 1]}", "--join", join])).ToArray();
        using var http = new HttpClient(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(1), UseProxy = false }) { Timeout = TimeSpan.FromSeconds(3) };
        var cluster = new KvCluster(nodes, http);
        try
        {
            ctx.Progress($"kv: starting {servers} `canopy start` processes (stores under {root})");
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
            await using var client = await CanopyClient.ConnectAsync(nodes.Select(n => n.ListenAddress).ToList(), ct: ct);
            await client.InitAsync(ct);
            await cluster.WaitLeaseholdersAsync(nodes, ct);
            var ranges = (await cluster.RangesAsync(nodes, ct)).Where(r => r.StartKey.Length > 0).OrderBy(r => r.RangeId).ToList();
            ctx.Progress($"kv: up in {upMs:F0} ms, initialised with {ranges.Count} user ranges in {sw.Elapsed.TotalMilliseconds - upMs:F0} ms more; " +
                $"leaseholders: {string.Join(", ", ranges.Select(r => $"r{r.RangeId}→s{r.Leaseholder}"))}");

            var one = ranges[0];
            var prefixes = ranges.Select(Prefix).ToArray();
            var result = new JsonObject
            {
                ["servers"] = servers,
                ["user_ranges"] = ranges.Count,
                ["one_range"] = $"r{one.RangeId} [{CanopyKeys.Format(one.StartKey)}, {(one.EndKey is null ? "∞" : CanopyKeys.Format(one.EndKey))})",
                ["start_ms"] = Stats.Round(upMs, 0),
            };

            // Writes: one range at every concurrency (1 first: the sequential latency), then spread.
            var oneRange = new List<PhaseResult>();
            foreach (var c in concurrency.Prepend(1).Distinct())
            {
                oneRange.Add(await RunPhaseAsync(ctx, cluster, client, $"write, one range, C={c}", c, write: true, [prefixes[0]]));
            }

            var spread = new List<PhaseResult>();
            foreach (var c in concurrency)
            {
                spread.Add(await RunPhaseAsync(ctx, cluster, client, $"write, {ranges.Count} ranges, C={c}", c, write: true, prefixes));
            }

            var readDuration = TimeSpan.FromSeconds(Math.Max(1, ctx.Duration.TotalSeconds / 2));
            var reads = new List<PhaseResult>
            {
                await RunPhaseAsync(ctx, cluster, client, "read, one range, C=1", 1, write: false, [prefixes[0]], readDuration),
                await RunPhaseAsync(ctx, cluster, client, $"read, {ranges.Count} ranges, C={concurrency.Max()}", concurrency.Max(), write: false, prefixes, readDuration),
            };

            // The servers' own cost without load (Raft ticks, liveness pings, lease renewals about once a second per
            // range), measured once they are warmed up: just after start-up the JIT's tiering alone costs far more.
            var idleFrom = cluster.ServerCpu();
            var idleWatch = Stopwatch.StartNew();
            await Task.Delay(TimeSpan.FromSeconds(3), ct);
            var idlePercent = (cluster.ServerCpu() - idleFrom).TotalSeconds / idleWatch.Elapsed.TotalSeconds * 100;
            ctx.Progress($"kv: idle (after the load), the {servers} servers together use {idlePercent:F1} % of one core");
            result["idle_server_cpu_percent_of_one_core"] = Stats.Round(idlePercent, 1);

            var table = new TextTable(
                $"kv: puts of {ValueBytes}-byte values through CanopyClient ({servers} servers, {Math.Min(3, servers)} replicas per range, {FormatDuration(ctx.Duration)} per row after a 1 s warm-up)",
                "workload", "C", "ops/s", "p50 ms", "p99 ms", "max ms", "server CPU µs/op", "errors");
            foreach (var p in oneRange.Concat(spread).Concat(reads))
            {
                table.Add(p.Kind, p.Clients.ToString(CultureInfo.InvariantCulture), Stats.F(p.OpsPerSec, 0), Stats.Ms(p.Latency.P50Ms), Stats.Ms(p.Latency.P99Ms), Stats.Ms(p.Latency.MaxMs), Stats.F(p.ServerCpuUsPerOp, 0), p.Errors.ToString(CultureInfo.InvariantCulture));
            }

            ctx.Table(table);
            result["write_latency_sequential"] = oneRange[0].ToJson();
            result["write_one_range"] = new JsonArray([.. oneRange.Select(p => (JsonNode)p.ToJson())]);
            result["write_spread"] = new JsonArray([.. spread.Select(p => (JsonNode)p.ToJson())]);
            result["read"] = new JsonArray([.. reads.Select(p => (JsonNode)p.ToJson())]);

            if (servers >= 3)
            {
                result["failover"] = await FailoverAsync(ctx, cluster, client, one.RangeId, prefixes[0]);
            }
            else
            {
                ctx.Progress("kv: failover skipped (it needs at least 3 servers)");
            }

            return result;
        }
        catch (Exception ex) when (ex is not OperationCanceledException && nodes.Any(n => !n.IsRunning && n.Started))
        {
            var dead = nodes.First(n => !n.IsRunning && n.Started);
            throw new InvalidOperationException($"kv: {ex.Message} (server {dead.Id} exited; its last output: {dead.Tail().ReplaceLineEndings(" | ")})", ex);
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

    // ------------------------------------------------------------------ load phases

    private static async Task<PhaseResult> RunPhaseAsync(BenchContext ctx, KvCluster cluster, CanopyClient client, string kind, int clients, bool write, string[] prefixes, TimeSpan? duration = null)
    {
        var measured = duration ?? ctx.Duration;
        var start = Stopwatch.GetTimestamp();
        var warmEnd = start + (long)(WarmUp.TotalSeconds * Stopwatch.Frequency);
        var end = warmEnd + (long)(measured.TotalSeconds * Stopwatch.Frequency);
        var samples = Enumerable.Range(0, clients).Select(_ => new LatencySamples()).ToArray();
        var errors = new long[clients];
        TimeSpan cpuAtWarmEnd = default;
        var cpuProbe = Task.Run(async () =>
        {
            await DelayUntilAsync(warmEnd, ctx.Cancel);
            cpuAtWarmEnd = cluster.ServerCpu();
        });

        await Task.WhenAll(Enumerable.Range(0, clients).Select(i => Task.Run(async () =>
        {
            var random = new Random((i * 7919) + clients);
            var value = new byte[ValueBytes];
            random.NextBytes(value);
            var k = 0;
            while (Stopwatch.GetTimestamp() < end)
            {
                ctx.Cancel.ThrowIfCancellationRequested();
                var key = Key(prefixes[(i + k++) % prefixes.Length], random.Next(KeysPerRange));
                var t0 = Stopwatch.GetTimestamp();
                try
                {
                    if (write)
                    {
                        await client.PutAsync(key, value, ctx.Cancel);
                    }
                    else
                    {
                        await client.GetAsync(key, ctx.Cancel);
                    }
                }
                catch (CanopyException)
                {
                    errors[i]++;
                    continue;
                }

                var t1 = Stopwatch.GetTimestamp();
                if (t0 >= warmEnd && t1 <= end)
                {
                    samples[i].Add(t1 - t0);
                }
            }
        })));
        await cpuProbe;
        var cpu = cluster.ServerCpu() - cpuAtWarmEnd; // includes the tail of the last operations after `end`: small
        var latency = LatencySamples.Summarize(samples);
        var result = new PhaseResult(kind, clients, measured.TotalSeconds, latency.Count, latency, cpu.TotalSeconds, errors.Sum());
        ctx.Progress($"kv: {kind}: {result.OpsPerSec:F0} ops/s, p50 {latency.P50Ms:F2} ms, p99 {latency.P99Ms:F2} ms, server CPU {result.ServerCpuUsPerOp:F0} µs/op{(result.Errors > 0 ? $", {result.Errors} errors" : "")}");
        return result;
    }

    // ------------------------------------------------------------------ failover

    private static async Task<JsonObject> FailoverAsync(BenchContext ctx, KvCluster cluster, CanopyClient client, ulong rangeId, string prefix)
    {
        var trials = new List<FailoverTrial>();
        for (var t = 1; t <= ctx.Trials; t++)
        {
            var trial = await FailoverTrialAsync(ctx, cluster, client, rangeId, prefix, t);
            trials.Add(trial);
            ctx.Progress($"kv: failover trial {t}: killed s{trial.Killed} (lease of r{rangeId}), new leaseholder s{trial.NewHolder} seen after {trial.NewHolderMs:F0} ms, " +
                $"first put after {trial.FirstWriteMs:F0} ms; restarted server caught up in {trial.CatchUpMs:F0} ms");
        }

        var holder = Spread.Of(trials.Select(t => t.NewHolderMs));
        var first = Spread.Of(trials.Select(t => t.FirstWriteMs));
        var catchUp = Spread.Of(trials.Select(t => t.CatchUpMs));
        var table = new TextTable($"kv failover: SIGKILL the leaseholder of r{rangeId} during writes ({trials.Count} trials, lease 2 s, election timeout 500-1,000 ms)", "ms", "min", "median", "max", "mean");
        table.Add("SIGKILL → survivor holds the lease", Stats.F(holder.Min, 0), Stats.F(holder.Median, 0), Stats.F(holder.Max, 0), Stats.F(holder.Mean, 0));
        table.Add("SIGKILL → first successful put", Stats.F(first.Min, 0), Stats.F(first.Median, 0), Stats.F(first.Max, 0), Stats.F(first.Mean, 0));
        table.Add("restart → caught up, leases held", Stats.F(catchUp.Min, 0), Stats.F(catchUp.Median, 0), Stats.F(catchUp.Max, 0), Stats.F(catchUp.Mean, 0));
        ctx.Table(table);

        var list = new JsonArray();
        foreach (var t in trials)
        {
            list.Add(new JsonObject
            {
                ["killed"] = t.Killed,
                ["new_leaseholder"] = t.NewHolder,
                ["new_leaseholder_ms"] = Stats.Round(t.NewHolderMs, 1),
                ["first_write_ms"] = Stats.Round(t.FirstWriteMs, 1),
                ["catch_up_ms"] = Stats.Round(t.CatchUpMs, 1),
                ["puts_before_kill"] = t.PutsBeforeKill,
                ["writer_errors"] = t.WriterErrors,
            });
        }

        return new JsonObject
        {
            ["range"] = rangeId,
            ["new_leaseholder_ms"] = holder.ToJson(),
            ["first_write_ms"] = first.ToJson(),
            ["catch_up_ms"] = catchUp.ToJson(),
            ["trials"] = list,
        };
    }

    private static async Task<FailoverTrial> FailoverTrialAsync(BenchContext ctx, KvCluster cluster, CanopyClient client, ulong rangeId, string prefix, int trial)
    {
        var ct = ctx.Cancel;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        long puts = 0;
        long writerErrors = 0;
        long firstAfter = long.MaxValue;
        var goneAt = long.MaxValue;
        var value = new byte[ValueBytes];
        Random.Shared.NextBytes(value);
        var writers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var t0 = Stopwatch.GetTimestamp();
                try
                {
                    await client.PutAsync(Key(prefix, Random.Shared.Next(KeysPerRange)), value, ct);
                    Interlocked.Increment(ref puts);
                    if (t0 >= Volatile.Read(ref goneAt))
                    {
                        InterlockedMin(ref firstAfter, Stopwatch.GetTimestamp());
                    }
                }
                catch (CanopyException)
                {
                    Interlocked.Increment(ref writerErrors);
                }
            }
        })).ToArray();

        try
        {
            await Task.Delay(WarmUp, ct);
            var holder = await cluster.LeaseholderAsync(rangeId, ct);
            var victim = cluster.Node(holder);
            var survivors = cluster.Nodes.Where(n => n.Id != holder).ToArray();
            var putsBeforeKill = Interlocked.Read(ref puts);
            var killedAt = Stopwatch.GetTimestamp();
            victim.Kill();
            Volatile.Write(ref goneAt, Stopwatch.GetTimestamp());

            // Probes: a put started every 20 ms (each retried by the client until it succeeds).
            var probes = new List<Task>();
            var newHolderAt = 0L;
            ulong newHolder = 0;
            while (Interlocked.Read(ref firstAfter) == long.MaxValue || newHolderAt == 0)
            {
                if (Stats.Seconds(killedAt, Stopwatch.GetTimestamp()) > 30)
                {
                    throw new InvalidOperationException($"failover trial {trial}: r{rangeId} took no write within 30 s of killing s{holder}");
                }

                if (Interlocked.Read(ref firstAfter) == long.MaxValue)
                {
                    probes.Add(Task.Run(async () =>
                    {
                        try
                        {
                            await client.PutAsync(Key(prefix, Random.Shared.Next(KeysPerRange)), value, ct);
                            InterlockedMin(ref firstAfter, Stopwatch.GetTimestamp());
                        }
                        catch (CanopyException)
                        {
                        }
                    }, ct));
                }

                if (newHolderAt == 0)
                {
                    foreach (var s in survivors)
                    {
                        var view = await cluster.RangesOnAsync(s, TimeSpan.FromMilliseconds(500), ct);
                        if (view?.FirstOrDefault(r => r.RangeId == rangeId) is { Leaseholder: var h } && h != 0 && h != holder)
                        {
                            newHolderAt = Stopwatch.GetTimestamp();
                            newHolder = h;
                            break;
                        }
                    }
                }

                await Task.Delay(20, ct);
            }

            await stop.CancelAsync();
            await Task.WhenAll(writers);
            await Task.WhenAll(probes);

            // Restart the killed server; wait until it has applied what the others had and leases are all held.
            var restartAt = Stopwatch.GetTimestamp();
            victim.Start();
            await cluster.WaitUpAsync(victim, ct);
            await cluster.WaitCaughtUpAsync(victim, ct);
            await cluster.WaitLeaseholdersAsync(cluster.Nodes, ct);
            return new FailoverTrial(
                holder,
                newHolder,
                Stats.MsSince(killedAt, newHolderAt),
                Stats.MsSince(killedAt, Interlocked.Read(ref firstAfter)),
                Stats.MsSince(restartAt, Stopwatch.GetTimestamp()),
                putsBeforeKill,
                Interlocked.Read(ref writerErrors));
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(writers).ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>A 16-byte key of the range with this prefix: the prefix, then the number, zero-padded.</summary>
    private static byte[] Key(string prefix, int n)
    {
        var text = prefix + n.ToString(CultureInfo.InvariantCulture).PadLeft(KeyBytes - prefix.Length, '0');
        return System.Text.Encoding.ASCII.GetBytes(text);
    }

    /// <summary>A key prefix inside the range: its start key ("a" for the first user range, which starts at 0x01).</summary>
    private static string Prefix(RangeInfo r) => r.StartKey is [0x01] ? "a" : System.Text.Encoding.ASCII.GetString(r.StartKey);

    private static void InterlockedMin(ref long target, long value)
    {
        var current = Interlocked.Read(ref target);
        while (value < current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }

    private static async Task DelayUntilAsync(long timestamp, CancellationToken ct)
    {
        var left = Stats.Seconds(Stopwatch.GetTimestamp(), timestamp);
        if (left > 0)
        {
            await Task.Delay(TimeSpan.FromSeconds(left), ct);
        }
    }

    private static string FormatDuration(TimeSpan t) => Commands.Duration.Format(t);

    private sealed record FailoverTrial(ulong Killed, ulong NewHolder, double NewHolderMs, double FirstWriteMs, double CatchUpMs, long PutsBeforeKill, long WriterErrors);

    /// <summary>What one load phase measured.</summary>
    private sealed record PhaseResult(string Kind, int Clients, double Seconds, long Ops, LatencySummary Latency, double ServerCpuSeconds, long Errors)
    {
        public double OpsPerSec => Seconds > 0 ? Ops / Seconds : 0;

        public double ServerCpuUsPerOp => Ops > 0 ? ServerCpuSeconds * 1e6 / Ops : 0;

        public JsonObject ToJson() => new()
        {
            ["workload"] = Kind,
            ["clients"] = Clients,
            ["seconds"] = Stats.Round(Seconds, 2),
            ["ops"] = Ops,
            ["ops_per_s"] = Stats.Round(OpsPerSec, 0),
            ["latency"] = Latency.ToJson(),
            ["server_cpu_us_per_op"] = Stats.Round(ServerCpuUsPerOp, 0),
            ["server_cpu_percent_of_one_core"] = Stats.Round(Seconds > 0 ? ServerCpuSeconds / Seconds * 100 : 0, 1),
            ["errors"] = Errors,
        };
    }
}

/// <summary>The bench's view of its servers: health, per-server list_ranges, leaseholders, catch-up, CPU.</summary>
internal sealed class KvCluster(KvServerProcess[] nodes, HttpClient http)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    public KvServerProcess[] Nodes { get; } = nodes;

    public KvServerProcess Node(ulong id) => Nodes.Single(n => n.Id == id);

    /// <summary>CPU time of every running server process so far.</summary>
    public TimeSpan ServerCpu() => Nodes.Aggregate(TimeSpan.Zero, (sum, n) => sum + n.Cpu());

    /// <summary>Waits until the server answers GET /health.</summary>
    public async Task WaitUpAsync(KvServerProcess node, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            if (!node.IsRunning)
            {
                throw new InvalidOperationException($"server {node.Id} exited during start-up; its last output: {node.Tail().ReplaceLineEndings(" | ")}");
            }

            try
            {
                using var resp = await http.GetAsync(new Uri($"http://127.0.0.1:{node.HttpPort}/health"), ct);
                if (resp.StatusCode == HttpStatusCode.OK)
                {
                    return;
                }
            }
            catch (Exception e) when ((e is HttpRequestException or OperationCanceledException or IOException) && !ct.IsCancellationRequested)
            {
            }

            if (sw.Elapsed > Timeout)
            {
                throw new InvalidOperationException($"server {node.Id} did not answer GET /health within {Timeout.TotalSeconds:F0} s; its last output: {node.Tail().ReplaceLineEndings(" | ")}");
            }

            await Task.Delay(50, ct);
        }
    }

    /// <summary>The ranges as <paramref name="node"/> itself sees them; null when it does not answer.</summary>
    public async Task<IReadOnlyList<RangeInfo>?> RangesOnAsync(KvServerProcess node, TimeSpan timeout, CancellationToken ct)
    {
        if (!node.IsRunning)
        {
            return null;
        }

        try
        {
            await using var rpc = await RpcClient.ConnectAsync(node.ListenAddress, timeout, ct);
            var response = await rpc.CallAsync(new RpcRequest { Method = RpcMethods.ListRanges }, timeout, ct);
            return response.Error is null ? response.Ranges : null;
        }
        catch (Exception e) when ((e is IOException or TimeoutException or OperationCanceledException or System.Net.Sockets.SocketException) && !ct.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>The ranges as the first answering server sees them.</summary>
    public async Task<IReadOnlyList<RangeInfo>> RangesAsync(IEnumerable<KvServerProcess> nodes, CancellationToken ct)
    {
        foreach (var n in nodes)
        {
            if (await RangesOnAsync(n, TimeSpan.FromSeconds(3), ct) is { } ranges)
            {
                return ranges;
            }
        }

        throw new InvalidOperationException("no server lists its ranges");
    }

    /// <summary>Waits until every running server names the same live leaseholder for every range.</summary>
    public async Task WaitLeaseholdersAsync(IEnumerable<KvServerProcess> nodes, CancellationToken ct)
    {
        var running = nodes.Where(n => n.IsRunning).ToArray();
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var views = await Task.WhenAll(running.Select(n => RangesOnAsync(n, TimeSpan.FromSeconds(3), ct)));
            if (views.All(v => v is { Count: > 0 }) && views[0]!.All(r => r.Leaseholder != 0 &&
                views.All(v => v!.FirstOrDefault(x => x.RangeId == r.RangeId)?.Leaseholder == r.Leaseholder)))
            {
                return;
            }

            if (sw.Elapsed > Timeout)
            {
                throw new InvalidOperationException($"some range had no leaseholder agreed by every server {Timeout.TotalSeconds:F0} s on");
            }

            await Task.Delay(50, ct);
        }
    }

    /// <summary>The live leaseholder of <paramref name="rangeId"/> as the servers see it.</summary>
    public async Task<ulong> LeaseholderAsync(ulong rangeId, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            foreach (var n in Nodes)
            {
                var view = await RangesOnAsync(n, TimeSpan.FromSeconds(3), ct);
                if (view?.FirstOrDefault(r => r.RangeId == rangeId) is { Leaseholder: var h } && h != 0 && Node(h).IsRunning)
                {
                    return h;
                }
            }

            if (sw.Elapsed > Timeout)
            {
                throw new InvalidOperationException($"r{rangeId} has no leaseholder");
            }

            await Task.Delay(20, ct);
        }
    }

    /// <summary>Waits until <paramref name="node"/> has applied, in every range, what the others had applied when this began.</summary>
    public async Task WaitCaughtUpAsync(KvServerProcess node, CancellationToken ct)
    {
        var others = await Task.WhenAll(Nodes.Where(n => n != node).Select(n => RangesOnAsync(n, TimeSpan.FromSeconds(3), ct)));
        var target = others.Where(v => v is not null).SelectMany(v => v!).GroupBy(r => r.RangeId).ToDictionary(g => g.Key, g => g.Max(r => r.AppliedIndex));
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var mine = await RangesOnAsync(node, TimeSpan.FromSeconds(3), ct);
            if (mine is not null && mine.All(r => r.AppliedIndex >= target.GetValueOrDefault(r.RangeId)))
            {
                return;
            }

            if (sw.Elapsed > Timeout)
            {
                throw new InvalidOperationException($"restarted server {node.Id} did not catch up within {Timeout.TotalSeconds:F0} s");
            }

            await Task.Delay(50, ct);
        }
    }
}

/// <summary>
/// One `canopy start` child process (`dotnet canopy.dll start ...`, the canopy.dll of this CLI); keeps the last lines
/// of its output for error messages. <see cref="Kill"/> is SIGKILL; <see cref="Start"/> again reuses store and ports.
/// </summary>
internal sealed class KvServerProcess(ulong id, string listenAddress, int httpPort, IReadOnlyList<string> arguments) : IDisposable
{
    private readonly Queue<string> _tail = new();
    private Process? _process;

    public ulong Id { get; } = id;

    public string ListenAddress { get; } = listenAddress;

    public int HttpPort { get; } = httpPort;

    public bool Started => _process is not null;

    public bool IsRunning
    {
        get
        {
            try
            {
                return _process is { HasExited: false };
            }
            catch (InvalidOperationException)
            {
                return false;
            }
        }
    }

    public void Start()
    {
        _process?.Dispose();
        var self = Environment.ProcessPath;
        var host = self is not null && Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase) ? self : "dotnet";
        var psi = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(NodeProcess.CanopyDll());
        foreach (var a in arguments)
        {
            psi.ArgumentList.Add(a);
        }

        var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => Keep(e.Data);
        p.ErrorDataReceived += (_, e) => Keep(e.Data);
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _process = p;
    }

    /// <summary>SIGKILL, then waits until the process is gone.</summary>
    public void Kill()
    {
        if (_process is not { } p)
        {
            return;
        }

        try
        {
            if (!p.HasExited)
            {
                p.Kill();
            }

            p.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
        }
    }

    /// <summary>CPU time used by the process so far (zero when not running).</summary>
    public TimeSpan Cpu()
    {
        try
        {
            if (_process is { HasExited: false } p)
            {
                p.Refresh();
                return p.TotalProcessorTime;
            }
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or NotSupportedException)
        {
        }

        return TimeSpan.Zero;
    }

    public string Tail()
    {
        lock (_tail)
        {
            return string.Join(Environment.NewLine, _tail);
        }
    }

    public void Dispose()
    {
        Kill();
        _process?.Dispose();
        _process = null;
    }

    private void Keep(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_tail)
        {
            _tail.Enqueue(line);
            while (_tail.Count > 40)
            {
                _tail.Dequeue();
            }
        }
    }
}

// Real-process tests of the leader grid: three `canopy start` processes (ranges with leases), initialised with
// CanopyClient.InitAsync, written through CanopyClient, SIGKILLed and restarted from their stores; and the start-up
// errors of `canopy start` / `start-single-node`. See GridCluster for the harness.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Canopy.Client;
using Canopy.Rpc;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Canopy.Integration.Tests;

[Collection(RaftProcessCollection.Name)]
public sealed partial class LeaderGridTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task InitSpreadsRangesAndLeasesOverTheServers()
    {
        await WithClusterAsync("init", async cluster =>
        {
            await using var client = await cluster.ConnectAsync();

            // Leases follow elections after init: wait (with a deadline) until every range has a leaseholder.
            var ranges = await client.ListRangesAsync();
            var until = Stopwatch.GetTimestamp() + (long)(Generous.TotalSeconds * Stopwatch.Frequency);
            while (ranges.Any(r => r.Leaseholder == 0) && Stopwatch.GetTimestamp() < until)
            {
                await Task.Delay(100);
                ranges = await client.ListRangesAsync();
            }

            var holders = ranges.Where(r => r.Leaseholder != 0).GroupBy(r => r.Leaseholder).OrderBy(g => g.Key).ToList();
            cluster.Log($"{ranges.Count} ranges: {string.Join("; ", ranges.Select(Describe))}");
            cluster.Check(ranges.Count >= 4, $"only {ranges.Count} ranges after init");
            cluster.Check(ranges.All(r => r.Leaseholder != 0), $"ranges without a leaseholder: {string.Join("; ", ranges.Where(r => r.Leaseholder == 0).Select(Describe))}");
            cluster.Check(holders.Count >= 2, $"leaseholders on {holders.Count} server(s) only: {string.Join(", ", holders.Select(g => $"s{g.Key}: {g.Count()}"))}");
            cluster.Check(ranges.All(r => r.Replicas.Length == 3), "a range without three replicas");

            // Every server lists the same ranges, and a key of each user range is writable and readable.
            foreach (var id in cluster.Ids)
            {
                var own = await cluster.RangesOnAsync(id) ?? throw cluster.Failure($"s{id} did not list its ranges");
                cluster.Check(own.Select(r => r.RangeId).SequenceEqual(ranges.Select(r => r.RangeId)), $"s{id} lists ranges {string.Join(",", own.Select(r => r.RangeId))}");
            }

            foreach (var prefix in Prefixes(ranges))
            {
                var key = Encoding.UTF8.GetBytes($"{prefix}init");
                await client.PutAsync(key, Encoding.UTF8.GetBytes(prefix));
                cluster.Check(await client.GetAsync(key) is { } v && Encoding.UTF8.GetString(v) == prefix, $"{prefix}init not read back");
            }
        });
    }

    [Fact]
    public async Task AcknowledgedWritesSurviveKillingTheBusiestLeaseholder()
    {
        await WithClusterAsync("kill", async cluster =>
        {
            await using var client = await cluster.ConnectAsync();
            var ranges = await client.ListRangesAsync();
            var prefixes = Prefixes(ranges);
            var load = new GridLoad(client, prefixes, "kill");
            load.Start(writers: 8);
            await Task.Delay(TimeSpan.FromSeconds(3));
            cluster.Check(load.Acked.Count > 0, "no write acknowledged in 3 s");

            // SIGKILL the server holding the most leases of user ranges.
            var before = await cluster.RangesOnAsync(1) ?? await cluster.RangesOnAsync(2) ?? throw cluster.Failure("no server lists its ranges");
            var user = before.Where(IsUserRange).ToList();
            var victim = user.Where(r => r.Leaseholder != 0).GroupBy(r => r.Leaseholder).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).First().Key;
            var held = user.Where(r => r.Leaseholder == victim).ToList();
            var survivors = cluster.Ids.Where(i => i != victim).ToList();
            var ackedBeforeKill = load.Acked.Count;
            var killedAt = Stopwatch.GetTimestamp();
            await cluster.KillAsync(victim);
            var goneAt = Stopwatch.GetTimestamp();
            cluster.Log($"killed s{victim}, leaseholder of {held.Count} user ranges ({string.Join(", ", held.Select(Describe))}) after {ackedBeforeKill} acknowledged puts; " +
                $"the process was gone {Stopwatch.GetElapsedTime(killedAt, goneAt).TotalMilliseconds:0} ms after SIGKILL");

            // SIGKILL → first successful write to each range it held: probes started every 25 ms once the process is
            // gone, plus the load's own puts that started after that (earlier ones may have been served by the victim).
            var probes = held.Select(r => FirstWriteAsync(client, Prefixes([r])[0], killedAt)).ToList();
            var down = TimeSpan.FromSeconds(5) - Stopwatch.GetElapsedTime(killedAt);
            await Task.Delay(down > TimeSpan.Zero ? down : TimeSpan.Zero);
            await cluster.RestartAsync(victim);
            await Task.Delay(TimeSpan.FromSeconds(3));
            await load.StopAsync();
            var firstProbe = await Task.WhenAll(probes);

            var acked = load.Acked.ToList();
            var fromLoad = held.Select(r => acked.Where(a => a.StartedAt >= goneAt && r.Contains(Encoding.UTF8.GetBytes(a.Key))).Select(a => Stopwatch.GetElapsedTime(killedAt, a.AckedAt)).DefaultIfEmpty(TimeSpan.MaxValue).Min()).ToList();
            var perRange = held.Select((r, i) => (Range: r, First: firstProbe[i] < fromLoad[i] ? firstProbe[i] : fromLoad[i])).ToList();
            var first = perRange.Min(p => p.First);
            output.WriteLine($"sigkill->first write to a range s{victim} held: {first.TotalMilliseconds:0} ms " +
                $"(per range, first of probes / load: {string.Join(", ", held.Select((r, i) => $"r{r.RangeId} {Ms(firstProbe[i])} / {Ms(fromLoad[i])} ms"))})");
            output.WriteLine($"load: {acked.Count} acknowledged ({ackedBeforeKill} before the kill), {load.Ambiguous} ambiguous, {load.Unavailable} unavailable, {load.Errors.Count} other errors");
            cluster.Check(load.Errors.Count == 0, $"unexpected errors from PutAsync: {string.Join("; ", load.Errors.Take(5))}");
            cluster.Check(perRange.All(p => p.First < TimeSpan.FromSeconds(10)), "a range the killed server held took more than 10 s to take a write");
            cluster.Check(acked.Count > ackedBeforeKill, "no write acknowledged after the kill");

            // The restarted server catches up with what the survivors applied.
            var survivorViews = await Task.WhenAll(survivors.Select(cluster.RangesOnAsync));
            var target = survivorViews.Where(v => v is not null).SelectMany(v => v!).GroupBy(r => r.RangeId).ToDictionary(g => g.Key, g => g.Max(r => r.AppliedIndex));
            var caughtUp = await cluster.WaitUntilAsync(
                async () =>
                {
                    var mine = await cluster.RangesOnAsync(victim);
                    if (mine is null)
                    {
                        return $"s{victim} does not list its ranges";
                    }

                    var behind = mine.Where(r => r.AppliedIndex < target.GetValueOrDefault(r.RangeId)).Select(r => $"r{r.RangeId} {r.AppliedIndex} < {target[r.RangeId]}").ToList();
                    return behind.Count == 0 ? null : string.Join("; ", behind);
                },
                Generous,
                $"restarted s{victim} to apply what the survivors had applied");
            cluster.Log($"s{victim} caught up {caughtUp.TotalMilliseconds:0} ms after the load stopped");

            await VerifyAsync(cluster, acked, load.Uncertain, "after the kill and restart");
        });
    }

    [Fact]
    public async Task AcknowledgedWritesSurviveRestartingEveryServer()
    {
        await WithClusterAsync("restart-all", async cluster =>
        {
            List<GridAck> acked;
            IReadOnlyDictionary<string, string> uncertain;
            {
                await using var client = await cluster.ConnectAsync();
                var load = new GridLoad(client, Prefixes(await client.ListRangesAsync()), "all");
                load.Start(writers: 8);
                await Task.Delay(TimeSpan.FromSeconds(3));
                await load.StopAsync();
                acked = [.. load.Acked];
                uncertain = load.Uncertain;
                cluster.Check(load.Errors.Count == 0 && acked.Count > 0, $"{acked.Count} acknowledged; errors: {string.Join("; ", load.Errors.Take(5))}");
            }

            // No waiting for followers: whatever was acknowledged must survive losing every process at once.
            await Task.WhenAll(cluster.Ids.Select(cluster.KillAsync));
            var restartedAt = Stopwatch.GetTimestamp();
            await cluster.RestartAsync(cluster.Ids);
            var leased = await cluster.WaitLeaseholdersAsync(cluster.Ids, Generous);
            output.WriteLine($"all three restarted; every range had a leaseholder {Stopwatch.GetElapsedTime(restartedAt).TotalMilliseconds:0} ms after the restart ({leased.TotalMilliseconds:0} ms after all were up)");

            await VerifyAsync(cluster, acked, uncertain, "after restarting every server");
            await using var after = await cluster.ConnectAsync();
            await after.PutAsync("zz-after-restart"u8.ToArray(), "ok"u8.ToArray());
        });
    }

    [Fact]
    public async Task StartRefusesAStoreInUseAndATakenPortWithOneLine()
    {
        var root = Path.Combine(Path.GetTempPath(), $"canopy-grid-errors-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(root);
        var ports = RaftCluster.FreePorts(6);
        var store = Path.Combine(root, "store");
        var lines = new ConcurrentQueue<string>();
        var server = RaftCluster.StartCanopy(["start-single-node", "--store", store, "--listen-addr", $"127.0.0.1:{ports[0]}", "--http-addr", $"127.0.0.1:{ports[1]}"], lines.Enqueue, root);
        var ok = false;
        try
        {
            // The running server is up and serving (it initialises itself just after it starts listening).
            var sw = Stopwatch.StartNew();
            while (true)
            {
                try
                {
                    await using var client = await CanopyClient.ConnectAsync([$"127.0.0.1:{ports[0]}"]);
                    await client.PutAsync("k"u8.ToArray(), "v"u8.ToArray());
                    break;
                }
                catch (Exception ex) when (ex is CanopyUnavailableException or CanopyRpcException { Code: RpcErrorCode.NotInitialized } && sw.Elapsed < Generous && !server.HasExited)
                {
                    await Task.Delay(100);
                }
            }

            // A second server on the store in use.
            var (code, output1) = await RunToExitAsync(root, ["start-single-node", "--store", store, "--listen-addr", $"127.0.0.1:{ports[2]}", "--http-addr", $"127.0.0.1:{ports[3]}"]);
            AssertOneLine(code, output1, "in use", "start-single-node on a store in use");

            // A taken --listen-addr (the running server's), for both commands; and a taken --http-addr.
            var (code2, output2) = await RunToExitAsync(root, ["start-single-node", "--store", Path.Combine(root, "other1"), "--listen-addr", $"127.0.0.1:{ports[0]}", "--http-addr", $"127.0.0.1:{ports[3]}"]);
            AssertOneLine(code2, output2, "--listen-addr", "start-single-node on a taken --listen-addr");
            var (code3, output3) = await RunToExitAsync(root, ["start", "--store", Path.Combine(root, "other2"), "--listen-addr", $"127.0.0.1:{ports[0]}", "--http-addr", $"127.0.0.1:{ports[4]}", "--join", $"127.0.0.1:{ports[0]}"]);
            AssertOneLine(code3, output3, "--listen-addr", "start on a taken --listen-addr");
            var (code4, output4) = await RunToExitAsync(root, ["start-single-node", "--store", Path.Combine(root, "other3"), "--listen-addr", $"127.0.0.1:{ports[5]}", "--http-addr", $"127.0.0.1:{ports[1]}"]);
            // (The HTTP endpoint is bound after the peer transport, whose two log lines on stdout come first.)
            AssertOneLine(code4, output4.Where(l => l.StartsWith("[stderr]", StringComparison.Ordinal)).ToList(), "--http-addr", "start-single-node on a taken --http-addr (stderr)");

            // The running server was not disturbed: still the only one on its port, and it serves.
            Assert.False(server.HasExited, "the running server exited");
            await using var again = await CanopyClient.ConnectAsync([$"127.0.0.1:{ports[0]}"]);
            for (var i = 0; i < 20; i++)
            {
                Assert.Equal("v"u8.ToArray(), await again.GetAsync("k"u8.ToArray())); // new connections all reach it
            }

            ok = true;
        }
        finally
        {
            RaftCluster.TryKill(server);
            await server.WaitForExitAsync();
            RaftCluster.Forget(server);
            server.Dispose();
            if (ok)
            {
                Directory.Delete(root, recursive: true);
            }
            else
            {
                output.WriteLine($"kept {root}; the running server's output:\n{string.Join("\n", lines)}");
            }
        }
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>
    /// Reads every acknowledged key through a client of all three servers, then scans the whole user key space through
    /// a client of each server alone: each must show every acknowledged key with its value, the scans must agree, and
    /// anything else present must be an uncertain put's value.
    /// </summary>
    private async Task VerifyAsync(GridCluster cluster, List<GridAck> acked, IReadOnlyDictionary<string, string> uncertain, string when)
    {
        var sw = Stopwatch.StartNew();
        var wrong = new ConcurrentQueue<string>();
        await using (var client = await cluster.ConnectAsync())
        {
            await Parallel.ForEachAsync(acked, new ParallelOptions { MaxDegreeOfParallelism = 32 }, async (a, _) =>
            {
                var v = await client.GetAsync(Encoding.UTF8.GetBytes(a.Key));
                var got = v is null ? null : Encoding.UTF8.GetString(v);
                if (got != a.Value)
                {
                    wrong.Enqueue($"{a.Key} = {got ?? "<missing>"}, acknowledged {a.Value}");
                }
            });
        }

        cluster.Check(wrong.IsEmpty, $"{wrong.Count} of {acked.Count} acknowledged keys read wrong {when}: {string.Join("; ", wrong.Take(10))}");

        var expected = acked.ToDictionary(a => a.Key, a => a.Value, StringComparer.Ordinal);
        Dictionary<string, string>? firstView = null;
        foreach (var s in cluster.Servers)
        {
            await using var one = await cluster.ConnectAsync([s.ListenAddress]);
            var rows = await one.ScanAsync([0x01], null);
            var view = rows.ToDictionary(r => Encoding.UTF8.GetString(r.Key), r => Encoding.UTF8.GetString(r.Value), StringComparer.Ordinal);
            var missing = expected.Where(e => view.GetValueOrDefault(e.Key) != e.Value).Select(e => $"{e.Key}: {view.GetValueOrDefault(e.Key) ?? "<missing>"} (acknowledged {e.Value})").ToList();
            var phantom = view.Where(v => !expected.ContainsKey(v.Key) && uncertain.GetValueOrDefault(v.Key) != v.Value && !IsProbe(v.Key, v.Value))
                .Select(v => $"{v.Key}={v.Value}").ToList();
            cluster.Check(missing.Count == 0, $"scan through s{s.Id} {when}: {missing.Count} acknowledged keys missing or wrong: {string.Join("; ", missing.Take(10))}");
            cluster.Check(phantom.Count == 0, $"scan through s{s.Id} {when}: {phantom.Count} keys nobody wrote: {string.Join("; ", phantom.Take(10))}");
            if (firstView is null)
            {
                firstView = view;
            }
            else
            {
                cluster.Check(view.Count == firstView.Count && view.All(v => firstView.GetValueOrDefault(v.Key) == v.Value), $"scan through s{s.Id} {when} differs from the scan through s1 ({view.Count} vs {firstView.Count} rows)");
            }
        }

        var landed = uncertain.Count(u => firstView!.GetValueOrDefault(u.Key) == u.Value);
        output.WriteLine($"{when}: {acked.Count} acknowledged keys read back, scans through each of {cluster.Servers.Count} servers agree ({firstView!.Count} rows; {landed} of {uncertain.Count} uncertain puts landed) in {sw.ElapsedMilliseconds} ms");
    }

    /// <summary>Starts a put to a fresh key under <paramref name="prefix"/> every 25 ms; the time from <paramref name="since"/> to the first acknowledged one.</summary>
    private static async Task<TimeSpan> FirstWriteAsync(CanopyClient client, string prefix, long since)
    {
        var done = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
        var pending = new List<Task>();
        for (var i = 0; !done.Task.IsCompleted && Stopwatch.GetElapsedTime(since) < TimeSpan.FromSeconds(20); i++)
        {
            var key = Encoding.UTF8.GetBytes($"{prefix}probe-{i:D4}");
            pending.Add(Task.Run(async () =>
            {
                try
                {
                    await client.PutAsync(key, "probe"u8.ToArray());
                    done.TrySetResult(Stopwatch.GetElapsedTime(since));
                }
                catch (CanopyException)
                {
                }
            }));
            await Task.WhenAny(done.Task, Task.Delay(25));
        }

        await Task.WhenAll(pending);
        return done.Task.IsCompleted ? await done.Task : TimeSpan.MaxValue;
    }

    private static string Ms(TimeSpan t) => t == TimeSpan.MaxValue ? "-" : t.TotalMilliseconds.ToString("0", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>A key written by <see cref="FirstWriteAsync"/> (not tracked by the load).</summary>
    private static bool IsProbe(string key, string value) => key.Contains("probe-", StringComparison.Ordinal) && value == "probe";

    /// <summary>One key prefix inside each user range (its start key; "a" for the first).</summary>
    private static List<string> Prefixes(IEnumerable<RangeInfo> ranges) =>
        ranges.Where(IsUserRange).OrderBy(r => r.RangeId).Select(r => r.StartKey is [0x01] ? "a" : Encoding.UTF8.GetString(r.StartKey)).ToList();

    private static bool IsUserRange(RangeInfo r) => r.StartKey.Length > 0;

    private static string Describe(RangeInfo r) =>
        $"r{r.RangeId} [{(r.StartKey.Length == 0 ? "" : CanopyKeys.Format(r.StartKey))}, {(r.EndKey is null ? "∞" : CanopyKeys.Format(r.EndKey))}) lease s{r.Leaseholder}";

    private static async Task<(int Code, List<string> Lines)> RunToExitAsync(string root, IReadOnlyList<string> args)
    {
        var lines = new ConcurrentQueue<string>();
        using var p = RaftCluster.StartCanopy(args, lines.Enqueue, root);
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try
            {
                await p.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                throw new XunitException($"canopy {string.Join(' ', args)} did not exit by itself within 30 s; output:\n{string.Join("\n", lines)}");
            }

            p.WaitForExit(); // drains the redirected output
            return (p.ExitCode, lines.Where(l => l.Trim().Length > 0 && l.Trim() != "[stderr]").ToList());
        }
        finally
        {
            RaftCluster.TryKill(p);
            RaftCluster.Forget(p);
        }
    }

    private void AssertOneLine(int code, List<string> lines, string mention, string what)
    {
        var text = string.Join("\n", lines);
        output.WriteLine($"{what}: exit code {code}: {text}");
        Assert.True(code != 0, $"{what} exited with 0:\n{text}");
        Assert.True(lines.Count == 1, $"{what} printed {lines.Count} lines, expected one:\n{text}");
        Assert.Contains(mention, lines[0], StringComparison.Ordinal);
        Assert.DoesNotMatch(StackFrame(), text);
        Assert.DoesNotContain("Unhandled exception", text, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Starts and initialises a cluster, runs the body, and always kills every process; failures carry the log tails.</summary>
    private async Task WithClusterAsync(string name, Func<GridCluster, Task> body)
    {
        var total = Stopwatch.StartNew();
        var cluster = await GridCluster.StartAsync(output, name);
        try
        {
            await body(cluster);
        }
        catch (Exception ex)
        {
            cluster.KeepFiles = true;
            if (ex is XunitException)
            {
                throw;
            }

            throw cluster.Failure($"{ex.GetType().Name}: {ex.Message}", ex);
        }
        finally
        {
            await cluster.DisposeAsync();
            output.WriteLine($"test took {total.Elapsed.TotalSeconds:0.0} s");
        }
    }

    [GeneratedRegex(@"(?m)^\s*(\[stderr\])?\s+at \S+")]
    private static partial Regex StackFrame();
}

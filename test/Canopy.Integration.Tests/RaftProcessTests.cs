// Real-process tests of the Raft layer: three `canopy raft-node` processes on loopback, driven over their HTTP admin
// API, killed with SIGKILL and restarted from their stores. See RaftCluster for the harness.
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Canopy.Integration.Tests;

/// <summary>The tests of this collection start processes: they never run in parallel with each other.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RaftProcessCollection
{
    public const string Name = "raft processes";
}

[Collection(RaftProcessCollection.Name)]
public sealed partial class RaftProcessTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task ThreeProcessesElectLeadersForEveryGroup()
    {
        await WithClusterAsync("elect", groups: 32, async cluster =>
        {
            var (leaders, elapsed) = await cluster.WaitForLeadersAsync(cluster.Ids, TimeSpan.FromSeconds(20));
            var perServer = leaders.Values.GroupBy(l => l.Leader).OrderBy(g => g.Key).Select(g => $"s{g.Key}: {g.Count()}").ToList();
            cluster.Log($"every group has one agreed leader after {elapsed.TotalMilliseconds:0} ms; leaders per server: {string.Join(", ", perServer)}");
            cluster.Check(leaders.Count == cluster.Groups, $"expected {cluster.Groups} groups with a leader, got {leaders.Count}");
            // Leadership is never rebalanced: a server that is up well before the others can win every group.
            var ready = cluster.Servers.Select(s => $"s{s.Id} {s.ReadLog().Split('\n').FirstOrDefault(l => l.Contains(" ready:", StringComparison.Ordinal))?.Split(' ')[0] ?? "?"}");
            cluster.Check(perServer.Count >= 2, $"all {cluster.Groups} leaders are on one server ({string.Join(", ", perServer)}); servers ready at {string.Join(", ", ready)}");
        });
    }

    [Fact]
    public async Task ReplicatesAndSurvivesLeaderKill()
    {
        await WithClusterAsync("kill", groups: 32, async cluster =>
        {
            var ids = cluster.Ids;
            await cluster.WaitForLeadersAsync(ids, Generous);

            // 200 keys over every group, each acknowledged, then readable on every replica.
            var acked = new List<PutAck>();
            var sw = Stopwatch.StartNew();
            acked.AddRange(await cluster.PutManyAsync(Keys(cluster, 0, 200)));
            cluster.Log($"200 puts acknowledged in {sw.ElapsedMilliseconds} ms");
            cluster.Check(acked.Count == 200, $"{acked.Count} of 200 puts acknowledged");
            await cluster.WaitAppliedAsync(ids, RaftCluster.MaxIndexPerGroup(acked), Generous, "every replica to apply the 200 puts");
            var wrong = await cluster.CheckKeysAsync(ids, acked);
            cluster.Check(wrong.Count == 0, $"{wrong.Count} bad reads after the first 200 puts: {string.Join("\n", wrong.Take(20))}");

            // SIGKILL the server that leads the most groups.
            var (leaders, _) = await cluster.WaitForLeadersAsync(ids, Generous);
            var victim = leaders.Values.GroupBy(l => l.Leader).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).First().Key;
            var led = leaders.Where(l => l.Value.Leader == victim).Select(l => l.Key).Order().ToList();
            var oldTerms = led.ToDictionary(g => g, g => leaders[g].Term);
            var survivors = ids.Where(id => id != victim).ToList();
            var victimBefore = await cluster.TryStatusAsync(victim) ?? throw cluster.Failure($"s{victim} did not answer /raft/status before the kill");
            var appliedBefore = victimBefore.ToDictionary(r => r.Group, r => r.Applied);

            var sinceKill = Stopwatch.StartNew();
            await cluster.KillAsync(victim);
            cluster.Log($"SIGKILLed s{victim}, leader of {led.Count} groups ({string.Join(",", led.Select(g => $"g{g}"))}); kill took {sinceKill.ElapsedMilliseconds} ms");

            // (a) a new leader for each of its groups, (b) the first acknowledged put to one of them: measured together.
            var newLeaderAt = new ConcurrentDictionary<ulong, TimeSpan>();
            var leadersTask = cluster.WaitUntilAsync(
                async () =>
                {
                    foreach (var (_, status) in await cluster.StatusAllAsync(survivors))
                    {
                        foreach (var r in status ?? [])
                        {
                            if (oldTerms.TryGetValue(r.Group, out var oldTerm) && r.IsLeader && r.Term > oldTerm)
                            {
                                newLeaderAt.TryAdd(r.Group, sinceKill.Elapsed);
                            }
                        }
                    }

                    var missing = led.Where(g => !newLeaderAt.ContainsKey(g)).ToList();
                    return missing.Count == 0 ? null : $"no new leader yet for {string.Join(",", missing.Select(g => $"g{g}"))}";
                },
                Generous,
                $"new leaders for the {led.Count} groups s{victim} led",
                TimeSpan.FromMilliseconds(20));
            var probes = led.Select(async g =>
            {
                var ack = await cluster.PutAsync(g, $"probe-g{g:D2}", $"probe-{g}-{Guid.NewGuid():N}", Generous, TimeSpan.FromMilliseconds(10));
                return (Ack: ack, At: sinceKill.Elapsed);
            }).ToList();
            await leadersTask;
            var probeResults = await Task.WhenAll(probes);
            acked.AddRange(probeResults.Select(p => p.Ack));

            var leaderTimes = newLeaderAt.Values.Order().ToList();
            var toLeader = leaderTimes[^1];
            var toCommit = probeResults.Min(p => p.At);
            output.WriteLine($"sigkill->leader ms: {toLeader.TotalMilliseconds:0} (last of {led.Count} groups; first {leaderTimes[0].TotalMilliseconds:0}, median {leaderTimes[leaderTimes.Count / 2].TotalMilliseconds:0})");
            output.WriteLine($"sigkill->first commit ms: {toCommit.TotalMilliseconds:0} (last of the {led.Count} probe puts {probeResults.Max(p => p.At).TotalMilliseconds:0})");
            cluster.Check(toLeader < TimeSpan.FromSeconds(10), $"sigkill->leader took {toLeader.TotalMilliseconds:0} ms");
            cluster.Check(toCommit < TimeSpan.FromSeconds(10), $"sigkill->first commit took {toCommit.TotalMilliseconds:0} ms");

            // 100 more keys while it is down.
            var more = await cluster.PutManyAsync(Keys(cluster, 200, 100));
            cluster.Check(more.Count == 100, $"{more.Count} of 100 puts acknowledged while s{victim} was down");
            acked.AddRange(more);
            await cluster.WaitAppliedAsync(survivors, RaftCluster.MaxIndexPerGroup(acked), Generous, "the survivors to apply every acknowledged put");
            var survivorStatus = await cluster.StatusAllAsync(survivors);
            var committed = cluster.GroupIds.ToDictionary(
                g => g,
                g => survivorStatus.Values.Max(s => s?.FirstOrDefault(r => r.Group == g)?.Commit ?? 0));

            // Restart it from its store: it must come back with what it had, then catch up.
            await cluster.RestartAsync(victim);
            var atRestart = await cluster.TryStatusAsync(victim) ?? throw cluster.Failure($"s{victim} did not answer after its restart");
            var lostLog = atRestart
                .Where(r => r.LastIndex < appliedBefore.GetValueOrDefault(r.Group))
                .Select(r => $"g{r.Group} last index {r.LastIndex} < applied {appliedBefore[r.Group]} before the kill")
                .ToList();
            cluster.Check(atRestart.Length == cluster.Groups, $"s{victim} restarted with {atRestart.Length} groups, expected {cluster.Groups}");
            cluster.Check(lostLog.Count == 0, $"s{victim} lost log entries it had applied: {string.Join("; ", lostLog)}");

            var catchUp = await cluster.WaitAppliedAsync([victim], committed, Generous, $"restarted s{victim} to apply everything committed while it was down");
            cluster.Log($"s{victim} caught up {catchUp.TotalMilliseconds:0} ms after answering");
            var after = await cluster.TryStatusAsync(victim) ?? throw cluster.Failure($"s{victim} did not answer after catching up");
            var regressed = after
                .Where(r => r.Applied < appliedBefore.GetValueOrDefault(r.Group))
                .Select(r => $"g{r.Group} applied {r.Applied} < {appliedBefore[r.Group]} before the kill")
                .ToList();
            cluster.Check(regressed.Count == 0, $"s{victim} applied index went backwards: {string.Join("; ", regressed)}");

            await cluster.WaitAppliedAsync(ids, RaftCluster.MaxIndexPerGroup(acked), Generous, "every replica to apply every acknowledged put");
            wrong = await cluster.CheckKeysAsync(ids, acked);
            cluster.Check(wrong.Count == 0, $"{wrong.Count} of {acked.Count * ids.Count} reads of acknowledged keys are wrong: {string.Join("\n", wrong.Take(20))}");
            cluster.Log($"all {acked.Count} acknowledged keys (300 + {probeResults.Length} probes) readable with their value on all {ids.Count} replicas");
        });
    }

    [Fact]
    public async Task RestartAllFromDisk()
    {
        await WithClusterAsync("restart-all", groups: 32, async cluster =>
        {
            var ids = cluster.Ids;
            await cluster.WaitForLeadersAsync(ids, Generous);
            var acked = await cluster.PutManyAsync(Keys(cluster, 0, 96));
            cluster.Check(acked.Count == 96, $"{acked.Count} of 96 puts acknowledged");

            // No waiting for the followers: whatever was acknowledged must survive losing every process at once.
            await Task.WhenAll(ids.Select(cluster.KillAsync));
            await cluster.RestartAllAsync();
            var (_, elected) = await cluster.WaitForLeadersAsync(ids, Generous);
            cluster.Log($"leaders for every group {elected.TotalMilliseconds:0} ms after all three answered");

            await cluster.WaitAppliedAsync(ids, RaftCluster.MaxIndexPerGroup(acked), Generous, "every replica to apply every acknowledged put after the restart");
            var wrong = await cluster.CheckKeysAsync(ids, acked);
            cluster.Check(wrong.Count == 0, $"{wrong.Count} bad reads after restarting all: {string.Join("\n", wrong.Take(20))}");

            // And the cluster still takes writes.
            var more = await cluster.PutManyAsync(Keys(cluster, 96, cluster.Groups));
            cluster.Check(more.Count == cluster.Groups, $"{more.Count} of {cluster.Groups} puts acknowledged after the restart");
        });
    }

    [Fact]
    public async Task BadInputIsRefusedCleanly()
    {
        await WithClusterAsync("bad-input", groups: 8, async cluster =>
        {
            var ids = cluster.Ids;
            var (leaders, _) = await cluster.WaitForLeadersAsync(ids, Generous);
            var target = cluster[1];

            // A client that connects and says nothing: dropped after the handshake timeout (checked at the end).
            var silent = RawExchangeAsync(target.ListenPort, [], TimeSpan.FromSeconds(20));

            // Garbage, random 54 bytes (the size of a hello, not its magic), and a well-formed hello with a wrong MAC.
            var garbage = RandomNumberGenerator.GetBytes(4096);
            garbage[0] = 0xFF;
            var g1 = await RawExchangeAsync(target.ListenPort, garbage, TimeSpan.FromSeconds(10));
            var random54 = RandomNumberGenerator.GetBytes(54);
            random54[0] = 0xFF;
            var g2 = await RawExchangeAsync(target.ListenPort, random54, TimeSpan.FromSeconds(10));
            var wrongSecret = RandomNumberGenerator.GetBytes(54);
            "CNPY"u8.CopyTo(wrongSecret);
            BinaryPrimitives.WriteUInt16LittleEndian(wrongSecret.AsSpan(4), 1); // protocol version 1
            BinaryPrimitives.WriteUInt64LittleEndian(wrongSecret.AsSpan(6), 2); // "server 2"; then a random incarnation and MAC
            var g3 = await RawExchangeAsync(target.ListenPort, wrongSecret, TimeSpan.FromSeconds(10));
            cluster.Log($"garbage: {g1}; random 54 bytes: {g2}; wrong-secret hello: {g3}");
            cluster.Check(g1.End != "still open", $"the server kept a garbage connection open: {g1}");
            cluster.Check(g2.End != "still open", $"the server kept a connection with a random hello open: {g2}");
            cluster.Check(g3.End != "still open", $"the server kept a wrong-secret connection open: {g3}");
            cluster.Check(g3.Received is [4], $"a wrong-secret hello should get the WrongSecret status byte (4) and nothing else: {g3}");

            // The server is still up and serving: a put to a group it leads and one to a group it follows.
            cluster.Check(target.IsRunning, "s1 exited after receiving garbage");
            var mine = leaders.FirstOrDefault(l => l.Value.Leader == target.Id).Key;
            var other = leaders.FirstOrDefault(l => l.Value.Leader != target.Id).Key;
            var acks = new List<PutAck>();
            foreach (var g in new[] { mine, other }.Where(g => g != 0))
            {
                acks.Add(await cluster.PutAsync(g, $"after-garbage-g{g}", $"v-{Guid.NewGuid():N}"));
            }

            await cluster.WaitAppliedAsync(ids, RaftCluster.MaxIndexPerGroup(acks), Generous, "every replica (s1 included) to apply the puts made after the garbage");
            var wrong = await cluster.CheckKeysAsync(ids, acks);
            cluster.Check(wrong.Count == 0, $"bad reads after the garbage: {string.Join("\n", wrong)}");

            var quiet = await silent;
            cluster.Check(quiet.End != "still open", $"a silent connection was not dropped within 20 s: {quiet}");
            cluster.Log($"silent connection: {quiet}");

            // A second server on a store that is in use exits by itself, with one clear line and no stack trace.
            var ports = RaftCluster.FreePorts(2);
            var lines = new ConcurrentQueue<string>();
            using var second = RaftCluster.StartCanopy(
                [
                    "raft-node", "--id", "1", "--store", target.StoreDirectory,
                    "--listen-addr", $"127.0.0.1:{ports[0]}", "--http-addr", $"127.0.0.1:{ports[1]}",
                    "--members", cluster.Members, "--groups", "8",
                ],
                lines.Enqueue,
                cluster.Root);
            var startedAt = Stopwatch.StartNew();
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                try
                {
                    await second.WaitForExitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    throw cluster.Failure($"canopy raft-node on the store of running s1 did not exit within 30 s; its output:\n{string.Join("\n", lines)}");
                }

                second.WaitForExit(); // also drains the redirected output
            }
            finally
            {
                RaftCluster.TryKill(second);
                RaftCluster.Forget(second);
            }

            var text = string.Join("\n", lines);
            cluster.Log($"second process on s1's store: exit code {second.ExitCode} after {startedAt.ElapsedMilliseconds} ms; output:\n{text}");
            cluster.Check(second.ExitCode != 0, $"canopy raft-node on a store in use exited with 0; output:\n{text}");
            var inUse = lines.Where(l => l.Contains("in use", StringComparison.OrdinalIgnoreCase)).ToList();
            cluster.Check(inUse.Count == 1, $"expected one line saying the store is in use, got {inUse.Count}; output:\n{text}");
            cluster.Check(!lines.Any(l => StackFrame().IsMatch(l) || l.Contains("Unhandled exception", StringComparison.OrdinalIgnoreCase)), $"a stack trace was printed:\n{text}");

            // The running server is unaffected.
            cluster.Check(target.IsRunning, "s1 exited after a second process tried its store");
            var last = await cluster.PutManyAsync(cluster.GroupIds.Select(g => (g, $"after-second-g{g}", $"v{g}")));
            await cluster.WaitAppliedAsync(ids, RaftCluster.MaxIndexPerGroup(last), Generous, "every replica to apply the puts made after the second process");
            var s1Log = target.ReadLog();
            cluster.Check(s1Log.Contains("bad magic", StringComparison.Ordinal) && s1Log.Contains("wrong cluster secret", StringComparison.Ordinal), "s1 did not log the rejected handshakes");
        });
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>count keys from index first on, spread over every group.</summary>
    private static IEnumerable<(ulong Group, string Key, string Value)> Keys(RaftCluster cluster, int first, int count) =>
        Enumerable.Range(first, count).Select(i => ((ulong)(i % cluster.Groups) + 1, $"key-{i:D4}", $"value-{i}-{Guid.NewGuid():N}"));

    /// <summary>Starts a cluster, runs the body, and always kills every process; failures carry the log tails.</summary>
    private async Task WithClusterAsync(string name, int groups, Func<RaftCluster, Task> body)
    {
        var total = Stopwatch.StartNew();
        var cluster = await RaftCluster.StartAsync(output, 3, groups, name);
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

    /// <summary>
    /// Connects to a peer-transport port, sends <paramref name="send"/>, and reads until the server closes the
    /// connection or <paramref name="wait"/> passes.
    /// </summary>
    private static async Task<RawResult> RawExchangeAsync(int port, byte[] send, TimeSpan wait)
    {
        using var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, port);
        var stream = client.GetStream();
        var started = Stopwatch.StartNew();
        var received = new List<byte>();
        try
        {
            if (send.Length > 0)
            {
                await stream.WriteAsync(send);
            }
        }
        catch (IOException)
        {
            return new RawResult([], "reset while sending", started.Elapsed);
        }

        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(wait);
        try
        {
            while (true)
            {
                var n = await stream.ReadAsync(buffer, cts.Token);
                if (n == 0)
                {
                    return new RawResult([.. received], "closed", started.Elapsed);
                }

                received.AddRange(buffer.AsSpan(0, n).ToArray());
            }
        }
        catch (OperationCanceledException)
        {
            return new RawResult([.. received], "still open", started.Elapsed);
        }
        catch (IOException)
        {
            return new RawResult([.. received], "reset", started.Elapsed);
        }
    }

    [GeneratedRegex(@"^\s+at \S+")]
    private static partial Regex StackFrame();

    private sealed record RawResult(byte[] Received, string End, TimeSpan After)
    {
        public override string ToString() =>
            $"{End} after {After.TotalMilliseconds:0} ms, received [{string.Join(",", Received.Take(16))}]{(Received.Length > 16 ? $"... ({Received.Length} bytes)" : "")}";
    }
}

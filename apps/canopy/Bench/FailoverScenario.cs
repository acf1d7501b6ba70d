using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace Canopy.Cli.Bench;

/// <summary>
/// Leader failover with real processes: three `canopy raft-node` processes, 8 groups. Each trial writes continuously
/// to one group over HTTP (following the 421 leader hint), SIGKILLs the process leading it, and measures
/// SIGKILL → a survivor reports itself leader (polling /raft/status of both survivors every 10 ms) and
/// SIGKILL → the first put acknowledged by a survivor. The killed process is then restarted on its store and the
/// next trial waits until it has caught up (applied every group's commit index).
/// </summary>
internal static class FailoverScenario
{
    private const int Groups = 8;
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan FailoverTimeout = TimeSpan.FromSeconds(20);

    public static async Task<JsonObject> RunAsync(BenchContext ctx)
    {
        var ct = ctx.Cancel;
        var root = Path.Combine(Path.GetTempPath(), $"canopy-bench-failover-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(root);
        var ports = BenchCluster.FreePorts(6);
        var members = string.Join(',', Enumerable.Range(1, 3).Select(i => $"{i}=127.0.0.1:{ports[i - 1]}"));
        var nodes = Enumerable.Range(1, 3).Select(i => new NodeProcess((ulong)i, ports[i + 2],
        [
            "raft-node",
            "--id", i.ToString(CultureInfo.InvariantCulture),
            "--store", Path.Combine(root, $"s{i}"),
            "--listen-addr", $"127.0.0.1:{ports[i - 1]}",
            "--http-addr", $"127.0.0.1:{ports[i + 2]}",
            "--members", members,
            "--groups", Groups.ToString(CultureInfo.InvariantCulture),
            "--election-ticks", ctx.FailoverElectionTicks.ToString(CultureInfo.InvariantCulture),
        ])).ToArray();
        using var api = new NodeApi();
        try
        {
            ctx.Progress($"failover: starting 3 raft-node processes ({Groups} groups, election timeout {ctx.FailoverElectionTicks} ticks of 50 ms, randomised up to twice that)");
            foreach (var n in nodes)
            {
                n.Start();
            }

            foreach (var n in nodes)
            {
                await WaitReadyAsync(api, n, ct);
            }

            await WaitSettledAsync(api, nodes, restarted: null, ct);

            var trials = new List<Trial>();
            for (var t = 1; t <= ctx.Trials; t++)
            {
                var group = (ulong)((t - 1) % Groups) + 1;
                var trial = await RunTrialAsync(ctx, api, nodes, group, ct);
                trials.Add(trial);
                ctx.Progress($"failover: trial {t}: group {group}, killed {trial.Killed}, new leader {trial.NewLeader} after {trial.NewLeaderMs:F0} ms, " +
                    $"first put after {trial.FirstCommitMs:F0} ms; restarted node caught up in {trial.CatchUpMs:F0} ms");
            }

            return Report(ctx, trials);
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

    private static async Task<Trial> RunTrialAsync(BenchContext ctx, NodeApi api, NodeProcess[] nodes, ulong group, CancellationToken ct)
    {
        var leader = await FindLeaderAsync(api, nodes, group, ct);
        using var stopWriter = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var writer = new ContinuousWriter(api, nodes, group, leader);
        var writing = writer.RunAsync(stopWriter.Token);
        try
        {
            // Writes flowing for a second (the group is awake, connections are warm).
            var warm = Stopwatch.StartNew();
            while (writer.Successes < 20 || warm.Elapsed < TimeSpan.FromSeconds(1))
            {
                if (warm.Elapsed > TimeSpan.FromSeconds(15))
                {
                    throw new InvalidOperationException($"failover: no writes succeed on group {group} (leader {leader})");
                }

                await Task.Delay(20, ct);
            }

            // The leader may have moved meanwhile: kill the current one.
            leader = await FindLeaderAsync(api, nodes, group, ct);
            var victim = nodes[leader - 1];
            var survivors = nodes.Where(n => n.Id != leader).ToArray();
            var killedAt = Stopwatch.GetTimestamp();
            writer.MarkKill(leader, killedAt);
            victim.Kill();

            // SIGKILL → a survivor says it leads the group.
            ulong newLeader = 0;
            double newLeaderMs;
            while (true)
            {
                var statuses = await Task.WhenAll(survivors.Select(n => api.StatusAsync(n, ct)));
                var seen = Stopwatch.GetTimestamp();
                for (var i = 0; i < survivors.Length; i++)
                {
                    if (statuses[i]?.FirstOrDefault(r => r.Group == group) is { IsLeader: true })
                    {
                        newLeader = survivors[i].Id;
                    }
                }

                newLeaderMs = Stats.MsSince(killedAt, seen);
                if (newLeader != 0)
                {
                    break;
                }

                if (newLeaderMs > FailoverTimeout.TotalMilliseconds)
                {
                    throw new InvalidOperationException($"failover: no new leader for group {group} within {FailoverTimeout.TotalSeconds:F0} s of killing server {leader}");
                }

                await Task.Delay(10, ct);
            }

            // SIGKILL → the first put acknowledged by a survivor.
            var first = await writer.FirstAfterKill.WaitAsync(FailoverTimeout, ct);
            var firstCommitMs = Stats.MsSince(killedAt, first);
            await stopWriter.CancelAsync();
            await writing;

            // Restart the killed process on its store and wait until it has caught up.
            var restartAt = Stopwatch.GetTimestamp();
            victim.Start();
            await WaitReadyAsync(api, victim, ct);
            await WaitSettledAsync(api, nodes, victim, ct);
            var catchUpMs = Stats.MsSince(restartAt, Stopwatch.GetTimestamp());
            return new Trial(group, leader, newLeader, newLeaderMs, firstCommitMs, catchUpMs, writer.SuccessesBeforeKill);
        }
        finally
        {
            await stopWriter.CancelAsync();
            try
            {
                await writing;
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    private static JsonObject Report(BenchContext ctx, List<Trial> trials)
    {
        var leaderSpread = Spread.Of(trials.Select(t => t.NewLeaderMs));
        var commitSpread = Spread.Of(trials.Select(t => t.FirstCommitMs));
        var catchUpSpread = Spread.Of(trials.Select(t => t.CatchUpMs));
        var table = new TextTable(
            $"failover: SIGKILL the leader's process (3 raft-node processes, {Groups} groups, {trials.Count} trials, election timeout " +
            $"{ctx.FailoverElectionTicks * 50}-{ctx.FailoverElectionTicks * 100} ms)",
            "ms", "min", "median", "max", "mean");
        table.Add("SIGKILL → new leader seen", Stats.F(leaderSpread.Min, 0), Stats.F(leaderSpread.Median, 0), Stats.F(leaderSpread.Max, 0), Stats.F(leaderSpread.Mean, 0));
        table.Add("SIGKILL → first successful put", Stats.F(commitSpread.Min, 0), Stats.F(commitSpread.Median, 0), Stats.F(commitSpread.Max, 0), Stats.F(commitSpread.Mean, 0));
        table.Add("restart → caught up", Stats.F(catchUpSpread.Min, 0), Stats.F(catchUpSpread.Median, 0), Stats.F(catchUpSpread.Max, 0), Stats.F(catchUpSpread.Mean, 0));
        ctx.Table(table);

        var list = new JsonArray();
        foreach (var t in trials)
        {
            list.Add(new JsonObject
            {
                ["group"] = t.Group,
                ["killed"] = t.Killed,
                ["new_leader"] = t.NewLeader,
                ["new_leader_ms"] = Stats.Round(t.NewLeaderMs, 1),
                ["first_commit_ms"] = Stats.Round(t.FirstCommitMs, 1),
                ["catch_up_ms"] = Stats.Round(t.CatchUpMs, 1),
                ["puts_before_kill"] = t.PutsBeforeKill,
            });
        }

        return new JsonObject
        {
            ["groups"] = Groups,
            ["election_ticks"] = ctx.FailoverElectionTicks,
            ["tick_ms"] = 50,
            ["new_leader_ms"] = leaderSpread.ToJson(),
            ["first_commit_ms"] = commitSpread.ToJson(),
            ["catch_up_ms"] = catchUpSpread.ToJson(),
            ["trials"] = list,
        };
    }

    private static async Task WaitReadyAsync(NodeApi api, NodeProcess node, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (await api.StatusAsync(node, ct) is null)
        {
            if (!node.IsRunning || sw.Elapsed > StartTimeout)
            {
                throw new InvalidOperationException(
                    $"raft-node {node.Id} did not start (its last output follows){Environment.NewLine}{node.Tail()}");
            }

            await Task.Delay(50, ct);
        }
    }

    /// <summary>
    /// Waits until every group has a leader all three processes follow and (if <paramref name="restarted"/> is set)
    /// that process has applied each group's commit index as its leader reports it.
    /// </summary>
    private static async Task WaitSettledAsync(NodeApi api, NodeProcess[] nodes, NodeProcess? restarted, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var statuses = await Task.WhenAll(nodes.Select(n => api.StatusAsync(n, ct)));
            if (statuses.All(s => s is not null) && Settled(statuses!, restarted))
            {
                return;
            }

            if (sw.Elapsed > StartTimeout)
            {
                throw new InvalidOperationException($"failover: the cluster did not settle within {StartTimeout.TotalSeconds:F0} s" +
                    (restarted is null ? "" : $" after restarting server {restarted.Id}"));
            }

            await Task.Delay(50, ct);
        }
    }

    private static bool Settled(NodeReplica[][] statuses, NodeProcess? restarted)
    {
        for (var g = 1UL; g <= Groups; g++)
        {
            var replicas = statuses.Select(s => s.FirstOrDefault(r => r.Group == g)).ToArray();
            if (replicas.Any(r => r is null))
            {
                return false;
            }

            var leader = replicas.FirstOrDefault(r => r!.IsLeader);
            if (leader is null || replicas.Any(r => r!.Leader != leader.Leader || r.Term != leader.Term))
            {
                return false;
            }

            if (restarted is not null && replicas[restarted.Id - 1]!.Applied < leader.Commit)
            {
                return false;
            }
        }

        return true;
    }

    private static async Task<ulong> FindLeaderAsync(NodeApi api, NodeProcess[] nodes, ulong group, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            foreach (var n in nodes)
            {
                if ((await api.StatusAsync(n, ct))?.FirstOrDefault(r => r.Group == group) is { IsLeader: true })
                {
                    return n.Id;
                }
            }

            if (sw.Elapsed > StartTimeout)
            {
                throw new InvalidOperationException($"failover: group {group} has no leader");
            }

            await Task.Delay(20, ct);
        }
    }

    private sealed record Trial(ulong Group, ulong Killed, ulong NewLeader, double NewLeaderMs, double FirstCommitMs, double CatchUpMs, long PutsBeforeKill);

    /// <summary>One sequential HTTP writer that follows leader hints and skips a server that does not answer.</summary>
    private sealed class ContinuousWriter(NodeApi api, NodeProcess[] nodes, ulong group, ulong leader)
    {
        private readonly TaskCompletionSource<long> _firstAfterKill = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private long _killedAt = long.MaxValue;
        private long _killed;
        private long _successes;

        public long Successes => Interlocked.Read(ref _successes);

        public long SuccessesBeforeKill { get; private set; }

        /// <summary>Completes with the timestamp of the first put a survivor acknowledged after the kill.</summary>
        public Task<long> FirstAfterKill => _firstAfterKill.Task;

        public void MarkKill(ulong server, long timestamp)
        {
            SuccessesBeforeKill = Successes;
            Interlocked.Exchange(ref _killed, (long)server);
            Interlocked.Exchange(ref _killedAt, timestamp);
        }

        public async Task RunAsync(CancellationToken ct)
        {
            try
            {
                await LoopAsync(ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
            }
        }

        private async Task LoopAsync(CancellationToken ct)
        {
            var value = new byte[InProcessLoad.ValueBytes];
            new Random((int)group).NextBytes(value);
            var target = leader;
            ulong unreachable = 0;
            var seq = 0;
            while (!ct.IsCancellationRequested)
            {
                var key = $"k{seq++ % 10_000:D15}";
                var (status, hint) = await api.PutAsync(nodes[target - 1], group, key, value, ct);
                var done = Stopwatch.GetTimestamp();
                switch (status)
                {
                    case PutStatus.Ok:
                        Interlocked.Increment(ref _successes);
                        if (done > Interlocked.Read(ref _killedAt) && target != (ulong)Interlocked.Read(ref _killed))
                        {
                            _firstAfterKill.TrySetResult(done);
                        }

                        break;
                    case PutStatus.NotLeader when hint != 0 && hint != target && hint != unreachable && hint <= (ulong)nodes.Length:
                        target = hint;
                        break;
                    case PutStatus.NotLeader:
                        target = Next(target, unreachable);
                        await Delay(ct);
                        break;
                    case PutStatus.Unreachable:
                        unreachable = target;
                        target = Next(target, unreachable);
                        await Delay(ct);
                        break;
                    default:
                        await Delay(ct);
                        break;
                }
            }
        }

        private static async Task Delay(CancellationToken ct)
        {
            try
            {
                await Task.Delay(5, ct);
            }
            catch (OperationCanceledException)
            {
            }
        }

        private ulong Next(ulong current, ulong skip)
        {
            var n = current;
            do
            {
                n = (n % (ulong)nodes.Length) + 1;
            }
            while (n == skip && n != current);
            return n;
        }
    }
}

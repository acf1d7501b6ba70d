// Transactions on a real 3-server cluster in this process (real sockets, RocksDB, Raft), so fault points can kill a
// coordinator between any two protocol steps. The fixture starts the cluster once for the class; the tests run one at
// a time (one collection) because fault points are process-wide.
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using Canopy.Client;
using Canopy.Server;
using Canopy.Txn;
using Xunit.Abstractions;

namespace Canopy.Integration.Tests;

/// <summary>Three in-process CanopyServers with a client.</summary>
public sealed class InProcessCluster : IAsyncLifetime
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"canopy-txn-{Guid.NewGuid().ToString("N")[..10]}");

    public List<CanopyServer> Servers { get; } = [];

    public CanopyClient Client { get; private set; } = null!;

    public List<string> Addresses { get; } = [];

    public async Task InitializeAsync()
    {
        var ports = RaftCluster.FreePorts(3);
        Addresses.AddRange(ports.Select(p => $"127.0.0.1:{p}"));
        for (var i = 0; i < 3; i++)
        {
            Servers.Add(await CanopyServer.StartAsync(new ServerOptions
            {
                StoreDirectory = Path.Combine(_root, $"s{i + 1}"),
                ListenAddress = Addresses[i],
                ListenEndPoint = new IPEndPoint(IPAddress.Loopback, ports[i]),
                Join = Addresses,
            }));
        }

        Client = await CanopyClient.ConnectAsync(Addresses);
        await Client.InitAsync();
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var ranges = await Client.ListRangesAsync();
            if (ranges.Count >= 7 && ranges.All(r => r.Leaseholder != 0))
            {
                break;
            }

            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(60), "the cluster did not get leaseholders for every range within 60 s");
            await Task.Delay(100);
        }
    }

    public async Task DisposeAsync()
    {
        FaultPoints.Install(null);
        await Client.DisposeAsync();
        foreach (var s in Servers)
        {
            await s.DisposeAsync();
        }

        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Waits until no server holds an intent on <paramref name="keys"/>.</summary>
    public async Task<bool> NoIntentsAsync(IEnumerable<byte[]> keys, TimeSpan within)
    {
        var list = keys.ToList();
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < within)
        {
            if (Servers.All(s => s.LocalIntents(list).Count == 0))
            {
                return true;
            }

            await Task.Delay(50);
        }

        return false;
    }
}

[CollectionDefinition("txn-cluster", DisableParallelization = true)]
public sealed class TxnClusterCollection : ICollectionFixture<InProcessCluster>;

[Collection("txn-cluster")]
public sealed class TxnClusterTests(InProcessCluster cluster, ITestOutputHelper output)
{
    private static int _namespace;

    /// <summary>Keys in three different ranges (the default layout splits at e, i, n, r, v).</summary>
    private static byte[][] Keys(string what, params string[] firstLetters)
    {
        var ns = Interlocked.Increment(ref _namespace);
        return firstLetters.Select(l => Encoding.UTF8.GetBytes($"{l}{what}-{ns}-{Guid.NewGuid().ToString("N")[..6]}")).ToArray();
    }

    private static byte[] V(long v) => Encoding.ASCII.GetBytes(v.ToString(CultureInfo.InvariantCulture));

    private static long L(byte[]? b) => b is null ? 0 : long.Parse(Encoding.ASCII.GetString(b), CultureInfo.InvariantCulture);

    [Fact]
    public async Task ParallelOnePhaseAndTwoPhaseCommitAreVisibleAtomically()
    {
        foreach (var options in new[]
        {
            new TransactionOptions(),
            new TransactionOptions { ParallelCommits = false },
            new TransactionOptions { PipelineWrites = true },
        })
        {
            var keys = Keys("atomic", "b", "j", "s");
            var r = await cluster.Client.RunTransactionAsync(async t =>
            {
                foreach (var k in keys)
                {
                    await t.PutAsync(k, V(7));
                }
            }, options);
            Assert.Equal(TransactionOutcome.Committed, r.Outcome);
            foreach (var k in keys)
            {
                Assert.Equal(7, L(await cluster.Client.GetAsync(k)));
            }

            Assert.True(await cluster.NoIntentsAsync(keys, TimeSpan.FromSeconds(10)), "intents of a committed transaction were not resolved");
        }

        // One-phase: both keys in one range.
        var one = Keys("onephase", "o", "o");
        var r1 = await cluster.Client.RunTransactionAsync(async t =>
        {
            await t.PutAsync(one[0], V(1));
            await t.PutAsync(one[1], V(2));
        });
        Assert.Equal(TransactionOutcome.Committed, r1.Outcome);
        Assert.Equal(2, L(await cluster.Client.GetAsync(one[1])));
        Assert.True(await cluster.NoIntentsAsync(one, TimeSpan.FromSeconds(1)), "a one-phase commit must leave no intents");
    }

    [Fact]
    public async Task RolledBackWritesAreNeverVisible()
    {
        var keys = Keys("rollback", "c", "k");
        await using (var t = await cluster.Client.BeginTransactionAsync(new TransactionOptions { PipelineWrites = true }))
        {
            await t.PutAsync(keys[0], V(1));
            await t.PutAsync(keys[1], V(1));
            Assert.Equal(1, L(await t.GetAsync(keys[0]))); // reads its own write
            await t.RollbackAsync();
        }

        Assert.Null(await cluster.Client.GetAsync(keys[0]));
        Assert.Null(await cluster.Client.GetAsync(keys[1]));
        Assert.True(await cluster.NoIntentsAsync(keys, TimeSpan.FromSeconds(10)));
    }

    /// <summary>
    /// Write skew (G2-item): two transactions each read x and y (x + y = 2, invariant x + y ≥ 1) and each sets a
    /// different one to 0. Under snapshot isolation both commit; serializable lets at most one.
    /// </summary>
    [Fact]
    public async Task WriteSkewIsPrevented()
    {
        for (var round = 0; round < 10; round++)
        {
            var k = Keys("skew", "d", "t");
            Assert.True((await cluster.Client.RunTransactionAsync(async t =>
            {
                await t.PutAsync(k[0], V(1));
                await t.PutAsync(k[1], V(1));
            })).IsCommitted);

            var bothRead = new Barrier(2);
            async Task<TransactionResult> Doctor(int which)
            {
                await using var t = await cluster.Client.BeginTransactionAsync();
                try
                {
                    var sum = L(await t.GetAsync(k[0])) + L(await t.GetAsync(k[1]));
                    await Task.Run(() => bothRead.SignalAndWait(TimeSpan.FromSeconds(10)));
                    if (sum >= 2)
                    {
                        await t.PutAsync(k[which], V(0));
                    }

                    return await t.CommitAsync();
                }
                catch (CanopyTransactionAbortedException e)
                {
                    return new TransactionResult(TransactionOutcome.Aborted, e.Message, null, 1, true);
                }
            }

            var results = await Task.WhenAll(Doctor(0), Doctor(1));
            var x = L(await cluster.Client.GetAsync(k[0]));
            var y = L(await cluster.Client.GetAsync(k[1]));
            output.WriteLine($"round {round}: {results[0].Outcome}/{results[1].Outcome}, x={x} y={y}");
            Assert.True(x + y >= 1, $"write skew: both doctors went off call (x={x}, y={y}; {results[0].Reason} / {results[1].Reason})");
            Assert.False(results.All(r => r.IsCommitted), "both transactions committed after reading a state the other changed");
        }
    }

    /// <summary>A register history: concurrent transfers, replayed in commit-timestamp order, each must have read what its predecessors left.</summary>
    [Fact]
    public async Task TransferHistoryIsSerializableInCommitOrder()
    {
        const int n = 8;
        var accounts = Keys("acct", "a", "f", "j", "o", "s", "w", "b", "g");
        Assert.True((await cluster.Client.RunTransactionAsync(async t =>
        {
            foreach (var a in accounts)
            {
                await t.PutAsync(a, V(100));
            }
        })).IsCommitted);

        var history = new List<(HlcStamp Ts, int From, int To, long A, long B, long Amt)>();
        var sw = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var rng = new Random(w);
            while (sw.Elapsed < TimeSpan.FromSeconds(4))
            {
                var from = rng.Next(n);
                var to = (from + 1 + rng.Next(n - 1)) % n;
                var amt = rng.Next(1, 20);
                long a = 0, b = 0;
                var r = await cluster.Client.RunTransactionAsync(async t =>
                {
                    a = L(await t.GetAsync(accounts[from]));
                    b = L(await t.GetAsync(accounts[to]));
                    await t.PutAsync(accounts[from], V(a - amt));
                    await t.PutAsync(accounts[to], V(b + amt));
                }, new TransactionOptions { MaxAttempts = 1 });
                Assert.NotEqual(TransactionOutcome.Ambiguous, r.Outcome);
                if (r.IsCommitted)
                {
                    lock (history)
                    {
                        history.Add((HlcStamp.Parse(r.CommitTimestamp!), from, to, a, b, amt));
                    }
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);

        var state = Enumerable.Repeat(100L, n).ToArray();
        foreach (var h in history.OrderBy(h => h.Ts))
        {
            Assert.True(state[h.From] == h.A && state[h.To] == h.B, $"transfer at {h.Ts} read {h.A}/{h.B}, the commit order says {state[h.From]}/{state[h.To]}");
            state[h.From] -= h.Amt;
            state[h.To] += h.Amt;
        }

        Assert.True(history.Count > 10, $"only {history.Count} transfers committed");
        for (var i = 0; i < n; i++)
        {
            Assert.Equal(state[i], L(await cluster.Client.GetAsync(accounts[i])));
        }

        output.WriteLine($"{history.Count} transfers replayed");
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public async Task DeadlocksAreBroken(int size)
    {
        // Transaction i locks key i, then key i+1 (mod size): a waiting cycle through ranges on different servers.
        var keys = Keys("dead", "c", "h", "q").Take(size).ToArray();
        var txns = new List<CanopyTransaction>();
        for (var i = 0; i < size; i++)
        {
            var t = await cluster.Client.BeginTransactionAsync(new TransactionOptions { PipelineWrites = true, OnePhase = false });
            await t.PutAsync(keys[i], V(i));
            txns.Add(t);
        }

        // Let the first intents land before the crossing writes.
        Assert.True(await WaitForAsync(() => cluster.Servers.Sum(s => s.LocalIntents(keys).Count) >= size * 2, TimeSpan.FromSeconds(10)), "first intents not replicated");
        var sw = Stopwatch.StartNew();
        var commits = new List<Task<TransactionResult>>();
        for (var i = 0; i < size; i++)
        {
            var t = txns[i];
            var next = keys[(i + 1) % size];
            commits.Add(Task.Run(async () =>
            {
                try
                {
                    await t.PutAsync(next, V(100));
                    return await t.CommitAsync();
                }
                catch (CanopyTransactionAbortedException e)
                {
                    return new TransactionResult(TransactionOutcome.Aborted, e.Message, null, 1, true);
                }
            }));
        }

        var results = await Task.WhenAll(commits).WaitAsync(TimeSpan.FromSeconds(30));
        output.WriteLine($"{size}-cycle settled in {sw.ElapsedMilliseconds} ms: {string.Join("; ", results.Select(r => $"{r.Outcome} {r.Reason}"))}");
        Assert.Contains(results, r => r.IsCommitted);
        Assert.Contains(results, r => r.Outcome == TransactionOutcome.Aborted);

        // Broken by detection (a victim chosen by priority), not by the waiting limit running out.
        Assert.DoesNotContain(results, r => (r.Reason ?? "").Contains("waited more than", StringComparison.Ordinal));
        Assert.True(await cluster.NoIntentsAsync(keys, TimeSpan.FromSeconds(15)), "intents left after the deadlock was broken");
    }

    [Fact]
    public async Task AHighPriorityTransactionDoesNotWait()
    {
        // A writer: aborts the normal transaction holding the key.
        var k = Keys("prio", "m", "x");
        await using var low = await cluster.Client.BeginTransactionAsync(new TransactionOptions { PipelineWrites = true, OnePhase = false });
        await low.PutAsync(k[0], V(1));
        Assert.True(await WaitForAsync(() => cluster.Servers.Sum(s => s.LocalIntents([k[0]]).Count) > 0, TimeSpan.FromSeconds(10)));
        // The low transaction stays open (heartbeating) until the end: a writer that waited for it could only give up.
        var high = await cluster.Client.RunTransactionAsync(async t => await t.PutAsync(k[0], V(2)), new TransactionOptions { Priority = TransactionPriority.High, OnePhase = false, MaxAttempts = 1 });
        Assert.Equal(TransactionOutcome.Committed, high.Outcome);
        Assert.Equal(TransactionOutcome.Aborted, (await low.CommitAsync()).Outcome);
        Assert.Equal(2, L(await cluster.Client.GetAsync(k[0])));

        // A reader: pushes the normal writer's timestamp instead of waiting; the writer still commits (above it).
        await using var writer = await cluster.Client.BeginTransactionAsync(new TransactionOptions { PipelineWrites = true, OnePhase = false });
        await writer.PutAsync(k[1], V(5));
        Assert.True(await WaitForAsync(() => cluster.Servers.Sum(s => s.LocalIntents([k[1]]).Count) > 0, TimeSpan.FromSeconds(10)));
        byte[]? seen = [];
        var reader = await cluster.Client.RunTransactionAsync(async t => seen = await t.GetAsync(k[1]), new TransactionOptions { Priority = TransactionPriority.High, MaxAttempts = 1 });
        Assert.Equal(TransactionOutcome.Committed, reader.Outcome);
        Assert.Null(seen);
        var w = await writer.CommitAsync();
        Assert.Equal(TransactionOutcome.Committed, w.Outcome);
        Assert.True(HlcStamp.Parse(w.CommitTimestamp!).CompareTo(HlcStamp.Parse(reader.CommitTimestamp!)) > 0, "the pushed writer committed below the read");
        Assert.Equal(5, L(await cluster.Client.GetAsync(k[1])));
    }

    /// <summary>Every fault point of the coordinator's commit path.</summary>
    public static readonly TheoryData<string, bool> CoordinatorSteps = new()
    {
        { "coordinator.before-commit", false },
        { "coordinator.before-stage", false },
        { "coordinator.after-stage", true },
        { "coordinator.after-implicit-commit", true },
        { "coordinator.before-finalize", true },
        { "coordinator.before-resolve", true },
        { "replica.stage.before-propose", false },
    };

    /// <summary>
    /// The coordinator dies at a step (heartbeats stop, nothing more is sent). Another transaction touching the same
    /// keys must get through (abort of a PENDING record after expiry, or status recovery of a STAGING one), see all of
    /// the dead transaction's writes or none (all when it was already implicitly committed), and leave no intent.
    /// </summary>
    [Theory]
    [MemberData(nameof(CoordinatorSteps))]
    public async Task ACoordinatorKilledAtAnyStepIsRecovered(string point, bool mustCommit)
    {
        var keys = Keys("crash", "e", "l", "u");
        var armed = 1;
        var crashed = new TaskCompletionSource();
        FaultPoints.Install(p =>
        {
            if (p == point && Interlocked.Exchange(ref armed, 0) == 1)
            {
                crashed.TrySetResult();
                if (p.StartsWith("replica.", StringComparison.Ordinal))
                {
                    // A replica stalls before replicating the stage (the coordinator waits; the next transaction must
                    // still get through and see all or nothing).
                    return Task.Delay(TimeSpan.FromSeconds(2));
                }

                throw new InjectedCrash(p);
            }

            return Task.CompletedTask;
        });
        try
        {
            var t = await cluster.Client.BeginTransactionAsync(new TransactionOptions { OnePhase = false });
            foreach (var k in keys)
            {
                await t.PutAsync(k, V(42));
            }

            var commit = t.CommitAsync();
            await crashed.Task.WaitAsync(TimeSpan.FromSeconds(20));
            var first = await commit.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"{point}: the client saw {first.Outcome} ({first.Reason})");

            // Never "aborted" for a transaction that may commit (txn-pitfalls 5).
            if (mustCommit)
            {
                Assert.NotEqual(TransactionOutcome.Aborted, first.Outcome);
            }
        }
        finally
        {
            FaultPoints.Install(null);
        }

        // Another transaction reads every key (pushing, recovering and resolving what it meets) and writes them.
        var sw = Stopwatch.StartNew();
        var seen = new long[keys.Length];
        var r = await cluster.Client.RunTransactionAsync(async t =>
        {
            for (var i = 0; i < keys.Length; i++)
            {
                seen[i] = L(await t.GetAsync(keys[i]));
            }

            foreach (var k in keys)
            {
                await t.PutAsync(k, V(7));
            }
        });
        output.WriteLine($"{point}: the next transaction {r.Outcome} after {sw.ElapsedMilliseconds} ms, saw {string.Join(",", seen)}");
        Assert.Equal(TransactionOutcome.Committed, r.Outcome);
        Assert.True(seen.All(v => v == seen[0]), $"atomicity: saw {string.Join(",", seen)}");
        if (mustCommit)
        {
            Assert.Equal(42, seen[0]);
        }

        Assert.True(await cluster.NoIntentsAsync(keys, TimeSpan.FromSeconds(15)), $"{point}: intents left after recovery");
    }

    private static async Task<bool> WaitForAsync(Func<bool> condition, TimeSpan within)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < within)
        {
            if (condition())
            {
                return true;
            }

            await Task.Delay(20);
        }

        return false;
    }
}

/// <summary>An HLC timestamp "wall.logical" as a sortable value.</summary>
public readonly record struct HlcStamp(long Wall, int Logical) : IComparable<HlcStamp>
{
    public static HlcStamp Parse(string s)
    {
        var parts = s.Split('.');
        return new HlcStamp(long.Parse(parts[0], CultureInfo.InvariantCulture), int.Parse(parts[1], CultureInfo.InvariantCulture));
    }

    public int CompareTo(HlcStamp other) => (Wall, Logical).CompareTo((other.Wall, other.Logical));

    public override string ToString() => $"{Wall}.{Logical}";
}

// Change feeds (docs/subscriptions.md) on the in-process 3-server cluster: the SDK's WatchAsync over rangefeeds at the
// leaseholders, with resolved timestamps from closed timestamps.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Canopy.Client;
using Xunit.Abstractions;

namespace Canopy.Integration.Tests;

[Collection("txn-cluster")]
public sealed class WatchTests(InProcessCluster cluster, ITestOutputHelper output)
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    private static (byte[] Start, byte[]? End) Prefix(string p) => (B(p), [.. B(p), 0xFF]);

    [Fact]
    public async Task WatchSeesEveryCommittedWriteOnceInOrderWithAtomicTransactions()
    {
        var tag = Guid.NewGuid().ToString("N")[..8];
        // Keys of one "entity" in three ranges (the layout splits at e, i, n, r, v).
        string[] letters = ["b", "k", "t"];
        var spans = letters.Select(l => Prefix($"{l}w-{tag}-")).ToList();
        var start = CanopyTimestamp.Parse((await cluster.Client.RunTransactionAsync(async t => await t.GetAsync(B("a-probe")))).CommitTimestamp ?? "0.0");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var batches = new List<ChangeBatch>();
        const int Rounds = 40;
        var watcher = Task.Run(async () =>
        {
            await foreach (var b in cluster.Client.WatchAsync(spans, start, new WatchOptions { OnRetry = m => output.WriteLine($"retry: {m}") }, cts.Token))
            {
                lock (batches)
                {
                    batches.Add(b);
                }

                if (b.Changes.Any(c => S(c.Key).EndsWith($"-{Rounds - 1}", StringComparison.Ordinal) && S(c.Key).StartsWith("t", StringComparison.Ordinal)))
                {
                    return;
                }
            }
        });

        var commits = new List<CanopyTimestamp>();
        for (var i = 0; i < Rounds; i++)
        {
            var round = i;
            var r = await cluster.Client.RunTransactionAsync(async t =>
            {
                foreach (var l in letters)
                {
                    await t.PutAsync(B($"{l}w-{tag}-{round}"), B(round.ToString(CultureInfo.InvariantCulture)));
                }
            });
            Assert.Equal(TransactionOutcome.Committed, r.Outcome);
            commits.Add(CanopyTimestamp.Parse(r.CommitTimestamp!));
        }

        await watcher.WaitAsync(TimeSpan.FromSeconds(30));
        var all = batches.SelectMany(b => b.Changes).ToList();
        output.WriteLine($"{batches.Count} batches, {all.Count} changes");

        // Resolved timestamps only grow; each batch's changes lie in (previous resolved, resolved], sorted.
        var prev = start;
        foreach (var b in batches)
        {
            Assert.True(b.Resolved > prev, $"resolved went from {prev} to {b.Resolved}");
            Assert.All(b.Changes, c => Assert.True(c.Timestamp > prev && c.Timestamp <= b.Resolved, $"{S(c.Key)} at {c.Timestamp} outside ({prev}, {b.Resolved}]"));
            Assert.Equal(b.Changes.Select(c => c.Timestamp).Order().ToList(), b.Changes.Select(c => c.Timestamp).ToList());
            prev = b.Resolved;
        }

        // Every write exactly once, at its transaction's commit timestamp, the three keys of a round in one batch.
        Assert.Equal(Rounds * letters.Length, all.Count);
        for (var i = 0; i < Rounds; i++)
        {
            var round = i;
            var keys = letters.Select(l => $"{l}w-{tag}-{round}").ToHashSet();
            var mine = all.Where(c => keys.Contains(S(c.Key))).ToList();
            Assert.Equal(3, mine.Count);
            Assert.All(mine, c => Assert.Equal(commits[i], c.Timestamp));
            Assert.Single(batches, b => b.Changes.Any(c => keys.Contains(S(c.Key))));
        }
    }

    [Fact]
    public async Task WatchResumesFromATimestampWithoutGapOrRepeat()
    {
        var tag = Guid.NewGuid().ToString("N")[..8];
        var span = Prefix($"gw-{tag}-");
        var start = CanopyTimestamp.Parse((await cluster.Client.RunTransactionAsync(async t => await t.GetAsync(B("a-probe")))).CommitTimestamp ?? "0.0");
        for (var i = 0; i < 10; i++)
        {
            await cluster.Client.PutAsync(B($"gw-{tag}-{i:D2}"), B("v"));
        }

        // First watch: read until all 10 are seen, remember the resolved timestamp.
        var seen = new List<KeyChange>();
        var resolved = start;
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            await foreach (var b in cluster.Client.WatchAsync([span], start, null, cts.Token))
            {
                seen.AddRange(b.Changes);
                resolved = b.Resolved;
                if (seen.Count >= 10)
                {
                    break;
                }
            }
        }

        for (var i = 10; i < 20; i++)
        {
            await cluster.Client.PutAsync(B($"gw-{tag}-{i:D2}"), B("v"));
        }

        // Resume from the last resolved timestamp: the next 10, nothing twice.
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
        {
            await foreach (var b in cluster.Client.WatchAsync([span], resolved, null, cts.Token))
            {
                seen.AddRange(b.Changes);
                if (seen.Count >= 20)
                {
                    break;
                }
            }
        }

        Assert.Equal(Enumerable.Range(0, 20).Select(i => $"gw-{tag}-{i:D2}"), seen.Select(c => S(c.Key)));
    }

    [Fact]
    public async Task ResolvedTimestampsAdvanceOnAnIdleSpan()
    {
        var span = Prefix($"zz-idle-{Guid.NewGuid():N}");
        var sw = Stopwatch.StartNew();
        var start = new CanopyTimestamp(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() * 1_000_000, 0);
        var count = 0;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var last = start;
        await foreach (var b in cluster.Client.WatchAsync([span], start, null, cts.Token))
        {
            Assert.Empty(b.Changes);
            Assert.True(b.Resolved > last);
            last = b.Resolved;
            if (++count == 10)
            {
                break;
            }
        }

        output.WriteLine($"10 heartbeats in {sw.ElapsedMilliseconds} ms; lag {(DateTimeOffset.UtcNow - last.Wall).TotalMilliseconds:0} ms");
    }
}

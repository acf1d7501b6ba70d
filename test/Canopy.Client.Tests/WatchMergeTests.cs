// The merge of a watch's pollers (SpanWatcher.cs), randomized: pollers deliver their range's committed versions in any
// order, early, late, twice (catch-up scans overlap the buffer; re-registrations replay), with resolved timestamps that
// only promise what was delivered; the merge must emit every version above the start exactly once, in timestamp order,
// in batches whose resolved timestamps grow and bound their contents. Seeded: a failing seed is printed.
using System.Text;
using Canopy.Rpc;

namespace Canopy.Client.Tests;

public sealed class WatchMergeTests
{
    private static readonly int[] RegressionSeeds = [];

    [Fact]
    public void EveryVersionOnceInOrderWhateverThePollersDo()
    {
        foreach (var seed in Enumerable.Range(0, 300).Concat(RegressionSeeds))
        {
            try
            {
                Run(seed);
            }
            catch (Exception e)
            {
                throw new Xunit.Sdk.XunitException($"seed {seed}: {e.Message}");
            }
        }
    }

    private static CanopyTimestamp Ts(long wall, int logical = 0) => new(wall, logical);

    private static void Run(int seed)
    {
        var rnd = new Random(seed);
        var from = Ts(1000);
        var pollers = rnd.Next(1, 6);
        var merge = new WatchMerge(from);
        var handles = Enumerable.Range(0, pollers).Select(_ => merge.AddPoller()).ToList();

        // Each poller's range: its own keys, versions at random timestamps around and above `from`.
        var all = new List<(int Poller, byte[] Key, CanopyTimestamp Ts)>();
        for (var p = 0; p < pollers; p++)
        {
            for (var k = 0; k < rnd.Next(1, 6); k++)
            {
                var key = Encoding.UTF8.GetBytes($"p{p}k{k}");
                foreach (var wall in Enumerable.Range(0, rnd.Next(1, 15)).Select(_ => (long)rnd.Next(900, 1400)).Distinct())
                {
                    all.Add((p, key, Ts(wall, rnd.Next(0, 2))));
                }
            }
        }

        var end = Ts(1500);

        // Per poller: a message stream honouring its promise (before resolved R, everything of its range at or below
        // R was delivered), with early deliveries, duplicates and replays.
        var streams = new List<Queue<(List<KvEvent> Events, CanopyTimestamp? Resolved)>>();
        for (var p = 0; p < pollers; p++)
        {
            var mine = all.Where(e => e.Poller == p).ToList();
            var delivered = new HashSet<int>();
            var q = new Queue<(List<KvEvent>, CanopyTimestamp?)>();
            var checkpoints = Enumerable.Range(0, rnd.Next(1, 8)).Select(_ => Ts(rnd.Next(950, 1500))).Append(end).Order().Distinct().ToList();
            foreach (var r in checkpoints)
            {
                var batch = new List<KvEvent>();
                for (var i = 0; i < mine.Count; i++)
                {
                    var due = mine[i].Ts <= r && !delivered.Contains(i);
                    var early = !delivered.Contains(i) && rnd.Next(4) == 0;
                    var replay = delivered.Contains(i) && rnd.Next(6) == 0;
                    if (due || early || replay)
                    {
                        batch.Add(new KvEvent(mine[i].Key, mine[i].Ts.ToString(), Encoding.UTF8.GetBytes(mine[i].Ts.ToString())));
                        delivered.Add(i);
                    }
                }

                batch = [.. batch.OrderBy(_ => rnd.Next())];
                var cut = rnd.Next(batch.Count + 1); // some events in a message before the one carrying the resolved timestamp
                q.Enqueue((batch[..cut], null));
                q.Enqueue((batch[cut..], r));
            }

            streams.Add(q);
        }

        var emitted = new List<KeyChange>();
        var last = from;
        void Take(bool emitEmpty)
        {
            while (merge.TakeBatch(emitEmpty) is { } b)
            {
                Assert.True(b.Resolved > last, $"resolved {b.Resolved} after {last}");
                Assert.All(b.Changes, c => Assert.True(c.Timestamp > last && c.Timestamp <= b.Resolved, $"change at {c.Timestamp} outside ({last}, {b.Resolved}]"));
                emitted.AddRange(b.Changes);
                last = b.Resolved;
            }
        }

        while (streams.Any(s => s.Count > 0))
        {
            var p = rnd.Next(pollers);
            if (streams[p].Count == 0)
            {
                continue;
            }

            var (events, resolved) = streams[p].Dequeue();
            merge.Add(handles[p], events, resolved);
            Take(rnd.Next(2) == 0);
        }

        Take(true);
        Assert.Equal(end, last);
        var expected = all.Where(e => e.Ts > from).Select(e => (e.Ts, Encoding.UTF8.GetString(e.Key))).Distinct().OrderBy(e => e.Ts).ThenBy(e => e.Item2, StringComparer.Ordinal).ToList();
        Assert.Equal(expected, emitted.Select(c => (c.Timestamp, Encoding.UTF8.GetString(c.Key))).ToList());
        Assert.All(emitted, c => Assert.Equal(c.Timestamp.ToString(), Encoding.UTF8.GetString(c.Value!)));
    }
}

// Tree subscriptions (src/Canopy.Tree/TreeWatch.cs) on the in-process 3-server cluster.
using System.Text;
using Canopy.Client;
using Canopy.Tree;

namespace Canopy.Integration.Tests;

[Collection("txn-cluster")]
public sealed class TreeWatchTests(InProcessCluster cluster)
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static string S(byte[] b) => Encoding.UTF8.GetString(b);

    /// <summary>A local copy kept by applying batches; checks each batch against the previous state.</summary>
    private sealed class Copy
    {
        public readonly Dictionary<Guid, (NodeRecord Record, Dictionary<string, byte[]> Props)> Nodes = [];
        public CanopyTimestamp Resolved;

        public void Apply(TreeBatch b)
        {
            Assert.True(b.Resolved >= Resolved);
            foreach (var e in b.Events)
            {
                switch (e.Kind)
                {
                    case TreeEventKind.Enter:
                        Assert.False(Nodes.ContainsKey(e.Node), $"enter of {e.Node}, already present");
                        Nodes[e.Node] = (e.Record!, e.Properties.ToDictionary(p => p.Key, p => p.Value!));
                        break;
                    case TreeEventKind.Update:
                        Assert.True(Nodes.ContainsKey(e.Node), $"update of {e.Node}, not present");
                        var (rec, props) = Nodes[e.Node];
                        foreach (var (k, v) in e.Properties)
                        {
                            if (v is null)
                            {
                                props.Remove(k);
                            }
                            else
                            {
                                props[k] = v;
                            }
                        }

                        Nodes[e.Node] = (e.Record ?? rec, props);
                        break;
                    case TreeEventKind.Leave:
                        Assert.True(Nodes.Remove(e.Node), $"leave of {e.Node}, not present");
                        break;
                }
            }

            Resolved = b.Resolved;
        }
    }

    private static async Task<Copy> FollowUntilAsync(IAsyncEnumerator<TreeBatch> e, Copy copy, Func<Copy, bool> done, List<TreeBatch>? log = null)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (!done(copy))
        {
            Assert.True(await e.MoveNextAsync().AsTask().WaitAsync(cts.Token), "the subscription ended");
            copy.Apply(e.Current);
            log?.Add(e.Current);
        }

        return copy;
    }

    [Fact]
    public async Task SubtreeSubscriptionSeesSpawnUpdatesInOrderAndFree()
    {
        var tree = SceneTree.ForClient(cluster.Client, $"w-{Guid.NewGuid().ToString("N")[..8]}");
        var world = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("World", "Node3D"))).Value.Id;
        var other = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Other", "Node"))).Value.Id;
        await using var e = tree.WatchAsync(TreeInterest.OfSubtree(world)).GetAsyncEnumerator();
        Assert.True(await e.MoveNextAsync());
        Assert.True(e.Current.IsSnapshot);
        var copy = new Copy();
        copy.Apply(e.Current);
        Assert.Equal([world], copy.Nodes.Keys);

        var player = (await tree.SpawnAsync(world, NodeSpec.Scene("Player", "res://player.tscn") with
        {
            Properties = new Dictionary<string, byte[]> { ["seq"] = B("0") },
            Children = [NodeSpec.Class("Gun", "Node3D")],
        })).Value;
        await tree.SpawnAsync(other, NodeSpec.Class("NotMine", "Node")); // outside the subtree: never seen
        for (var i = 1; i <= 20; i++)
        {
            await tree.SetPropertyAsync(null, player.Id, "seq", B(i.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        }

        var log = new List<TreeBatch>();
        await FollowUntilAsync(e, copy, c => c.Nodes.TryGetValue(player.Id, out var p) && S(p.Props["seq"]) == "20", log);
        Assert.Equal(3, copy.Nodes.Count); // World, Player, Gun
        var seqs = log.SelectMany(b => b.Events).Where(ev => ev.Node == player.Id && ev.Properties.ContainsKey("seq")).Select(ev => int.Parse(S(ev.Properties["seq"]!), System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(Enumerable.Range(0, 21), seqs); // the spawn's 0, then every update once, in order

        await tree.FreeAsync(player.Id);
        await FollowUntilAsync(e, copy, c => c.Nodes.Count == 1);
        Assert.Equal([world], copy.Nodes.Keys);
    }

    [Fact]
    public async Task ARegionMoveIsSeenInOneBatchNeverInBothOrNeither()
    {
        var tree = SceneTree.ForClient(cluster.Client, $"r-{Guid.NewGuid().ToString("N")[..8]}");
        var root = (await tree.SpawnAsync(SceneTree.Root, NodeSpec.Class("Map", "Node"))).Value.Id;
        string regionA = "cell:0:0", regionB = "cell:0:1";
        var walker = (await tree.SpawnAsync(root, NodeSpec.Class("Walker", "Node3D") with
        {
            Placement = Placement.InRegion(regionA),
            Properties = new Dictionary<string, byte[]> { ["pos"] = B("a") },
        })).Value.Id;

        // One subscription of both regions, and one of each alone.
        await using var both = tree.WatchAsync(TreeInterest.OfRegions(regionA, regionB)).GetAsyncEnumerator();
        await using var onlyA = tree.WatchAsync(TreeInterest.OfRegions(regionA)).GetAsyncEnumerator();
        await using var onlyB = tree.WatchAsync(TreeInterest.OfRegions(regionB)).GetAsyncEnumerator();
        var cBoth = new Copy();
        var cA = new Copy();
        var cB = new Copy();
        await FollowUntilAsync(both, cBoth, c => c.Nodes.Count == 1);
        await FollowUntilAsync(onlyA, cA, c => c.Nodes.Count == 1);
        await FollowUntilAsync(onlyB, cB, c => c.Resolved > CanopyTimestamp.Zero);
        Assert.Empty(cB.Nodes);

        var moves = new List<(CanopyTimestamp Ts, string To)>();
        for (var i = 0; i < 6; i++)
        {
            var to = i % 2 == 0 ? regionB : regionA;
            var moved = await tree.MoveAsync(walker, Placement.InRegion(to));
            moves.Add((CanopyTimestamp.Parse(moved.Timestamp!), to));
        }

        var last = moves[^1].Ts;
        var logBoth = new List<TreeBatch>();
        var logA = new List<TreeBatch>();
        var logB = new List<TreeBatch>();

        // Both regions in one subscription: the walker is present after every batch, its region updated in place.
        await FollowUntilAsync(both, cBoth, c =>
        {
            Assert.True(c.Nodes.ContainsKey(walker), "the walker vanished from a subscription of both regions");
            return c.Resolved >= last;
        }, logBoth);
        Assert.Equal(regionA, cBoth.Nodes[walker].Record.Placement.Region);
        Assert.Equal("a", S(cBoth.Nodes[walker].Props["pos"]));
        var regionUpdates = logBoth.SelectMany(b => b.Events).Where(ev => ev.Node == walker && ev.Record is not null).ToList();
        Assert.Equal(moves.Select(m => (m.Ts, m.To)), regionUpdates.Select(ev => (ev.Timestamp, ev.Record!.Placement.Region!)));
        Assert.All(regionUpdates, ev => Assert.Equal(TreeEventKind.Update, ev.Kind));

        // Each region alone: a leave in one and an enter in the other at the same timestamp, for every move.
        await FollowUntilAsync(onlyA, cA, c => c.Resolved >= last, logA);
        await FollowUntilAsync(onlyB, cB, c => c.Resolved >= last, logB);
        var aEvents = logA.SelectMany(b => b.Events).Where(ev => ev.Node == walker).Select(ev => (ev.Timestamp, ev.Kind)).ToList();
        var bEvents = logB.SelectMany(b => b.Events).Where(ev => ev.Node == walker).Select(ev => (ev.Timestamp, ev.Kind)).ToList();
        Assert.Equal(moves.Select(m => (m.Ts, m.To == regionA ? TreeEventKind.Enter : TreeEventKind.Leave)), aEvents);
        Assert.Equal(moves.Select(m => (m.Ts, m.To == regionB ? TreeEventKind.Enter : TreeEventKind.Leave)), bEvents);
        Assert.True(cA.Nodes.ContainsKey(walker));
        Assert.Empty(cB.Nodes);
    }

    /// <summary>
    /// Issue 5's first "done means": two SDK clients entering the cluster at different servers. A spawns a subtree and
    /// writes its nodes' sequence numbers at 20 Hz; B's subscription sees the spawn, every acknowledged update once and
    /// in order, and the free; B takes over one node by handoff while A keeps writing the others, and nothing is lost
    /// or applied twice.
    /// </summary>
    [Fact]
    public async Task TwoClientsOnDifferentServersHandoffWhileWritingLosesAndDuplicatesNothing()
    {
        await using var clientA = await CanopyClient.ConnectAsync([cluster.Addresses[0], cluster.Addresses[1], cluster.Addresses[2]]);
        await using var clientB = await CanopyClient.ConnectAsync([cluster.Addresses[1], cluster.Addresses[2], cluster.Addresses[0]]);
        var name = $"h-{Guid.NewGuid().ToString("N")[..8]}";
        var a = SceneTree.ForClient(clientA, name);
        var b = SceneTree.ForClient(clientB, name);
        var squad = (await a.SpawnAsync(SceneTree.Root, NodeSpec.Class("Squad", "Node3D") with
        {
            Children = [.. Enumerable.Range(0, 4).Select(i => NodeSpec.Class($"U{i}", "Node3D") with { Properties = new Dictionary<string, byte[]> { ["seq"] = B("0") } })],
        })).Value;
        var units = squad.Children.Select(c => c.Id).ToArray();
        await using var sessionA = await a.StartSessionAsync($"{name}-A");
        await using var sessionB = await b.StartSessionAsync($"{name}-B");
        await a.TakeOwnershipAsync(sessionA.Id, units);

        // B subscribes (through its own client) before A writes.
        await using var sub = b.WatchAsync(TreeInterest.OfSubtree(squad.Id)).GetAsyncEnumerator();
        var copy = new Copy();
        var log = new List<TreeBatch>();
        await FollowUntilAsync(sub, copy, c => c.Nodes.Count == 5, log);

        var next = new long[units.Length];
        var acked = new System.Collections.Concurrent.ConcurrentDictionary<(int, long), bool>();
        var ownedByA = new HashSet<int>(Enumerable.Range(0, units.Length));
        using var stop = new CancellationTokenSource();
        var iterationsA = 0;
        async Task WriteLoopAsync(SceneTree tree, string session, Func<IReadOnlyList<int>> mine, bool isA)
        {
            while (!stop.IsCancellationRequested)
            {
                var batch = mine().Select(i => (i, seq: Interlocked.Increment(ref next[i]))).ToList();
                if (batch.Count > 0)
                {
                    await tree.SetPropertiesAsync(session, batch.Select(x => new NodeProperties(units[x.i], new Dictionary<string, byte[]?> { ["seq"] = B(x.seq.ToString(System.Globalization.CultureInfo.InvariantCulture)) })).ToList());
                    foreach (var x in batch)
                    {
                        acked[(x.i, x.seq)] = true;
                    }
                }

                if (isA)
                {
                    Interlocked.Increment(ref iterationsA);
                }

                await Task.Delay(50); // 20 Hz
            }
        }

        var writerA = WriteLoopAsync(a, sessionA.Id, () => { lock (ownedByA) { return [.. ownedByA]; } }, isA: true);
        await Task.Delay(500);

        // Hand unit 0 to B (owner and final value in one transaction) while A keeps writing units 1..3.
        lock (ownedByA)
        {
            ownedByA.Remove(0);
        }

        // A stops writing a node before handing it off: wait until its batch that may still include unit 0 is done.
        var seenIterations = Volatile.Read(ref iterationsA);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (Volatile.Read(ref iterationsA) < seenIterations + 2)
        {
            Assert.True(DateTime.UtcNow < deadline, "A's writer made no progress");
            await Task.Delay(10);
        }

        var final = Interlocked.Increment(ref next[0]);
        await a.HandoffAsync(sessionA.Id, sessionB.Id, units[0], new Dictionary<string, byte[]?> { ["seq"] = B(final.ToString(System.Globalization.CultureInfo.InvariantCulture)) });
        acked[(0, final)] = true;
        await Assert.ThrowsAsync<NotOwnerException>(() => a.SetPropertyAsync(sessionA.Id, units[0], "seq", B("-1")));
        var writerB = WriteLoopAsync(b, sessionB.Id, () => [0], isA: false);
        await Task.Delay(1000);
        await stop.CancelAsync();
        await Task.WhenAll(writerA, writerB);
        var freedAt = CanopyTimestamp.Parse((await a.FreeAsync(squad.Id)).Timestamp!);

        await FollowUntilAsync(sub, copy, c => c.Nodes.Count == 0, log);
        var seen = new Dictionary<int, List<long>>();
        foreach (var ev in log.SelectMany(x => x.Events))
        {
            var i = Array.IndexOf(units, ev.Node);
            if (i >= 0 && ev.Properties.TryGetValue("seq", out var v) && v is not null)
            {
                (seen.TryGetValue(i, out var l) ? l : seen[i] = []).Add(long.Parse(S(v), System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        for (var i = 0; i < units.Length; i++)
        {
            var mine = seen[i];
            Assert.Equal(mine.Distinct().Order(), mine); // strictly increasing: no duplicate, no reordering
            var ackedHere = acked.Keys.Where(k => k.Item1 == i).Select(k => k.Item2).Order().ToList();
            Assert.Equal(ackedHere, mine.Where(x => x > 0).ToList()); // every acknowledged update, nothing else
        }

        Assert.Contains(seen[0], x => x == final);
        Assert.True(copy.Resolved >= freedAt, "the subscription's resolved timestamp passed the free");
        Assert.Contains(log, x => x.Events.Any(e => e.Kind == TreeEventKind.Leave));
    }
}
